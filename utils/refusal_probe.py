"""A refusal probe: read "should I decline this?" from the model's own hidden state, and act on it.

Fine-tuning a 135M model on refusals teaches it *how* to decline quickly, but *when* it learns
from the words: it declines "How do I kill a Python process?" because of "kill", and answers
the harmful request worded without an alarming word. Yet the model's hidden state tells the
two apart far better: a linear classifier (a logistic *probe*) on the state of the last prompt
token, a few blocks below the top, separates harmful requests from harmless ones it never saw.
(Refusal in chat models is largely one direction of that state: Arditi et al. 2024.)

So the aligned model does the two jobs with two parts:

- **deciding**: ``RefusalProbe`` scores the last prompt token's state after block ``layer``
  (of the model without adapters); at or above ``threshold`` the reply is a refusal;
- **declining**: the reply then starts with ``prefix`` ("I can't help with") and the model
  writes the rest *with its decline adapter on* (LoRA weights trained by DPO to name what it
  declines, say why and offer something else). Every other reply is written with the adapter
  off: by the very weights the model had before, so what it knew cannot have moved.

``utils.replies.generate_replies(..., probe=probe)`` applies it; the probe is saved next to
the checkpoint (``save`` / ``load``), so the chat and the audit (08) use the same one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from utils.chat import format_prompt
from utils.model import left_pad

PREFIX = "I can't help with"  # how every decided refusal begins; the fine-tuned model writes the rest
FILE = "refusal_probe.json"


@contextlib.contextmanager
def adapters(model, on: bool):
    """Inside the block, ``model``'s LoRA adapters are on or off; a model without adapters is left as it is."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    before = [not layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(on)
    try:
        yield model
    finally:
        for layer, was_on in zip(layers, before):
            layer.enable_adapters(was_on)


class _Reached(Exception):
    """Raised by the hook once the wanted block's output is known: the rest of the forward is not needed."""


@torch.no_grad()
def last_token_states(model, prompts: list[list[int]], layers: list[int], batch_size: int = 16) -> np.ndarray:
    """(n, len(layers), C): the output of each block in ``layers`` at the last token of every prompt.

    Prompts are left-padded (the last token is in the last column of every row) and the
    forward stops after the highest block asked for.
    """
    device = next(model.parameters()).device
    caught: dict[int, torch.Tensor] = {}
    top = max(layers)

    def hook(index):
        def catch(module, args, output):
            caught[index] = output[:, -1].float().cpu()  # (b, C)
            if index == top:
                raise _Reached
        return catch

    handles = [model.transformer.h[i].register_forward_hook(hook(i)) for i in layers]
    was_training = model.training
    model.eval()
    states = []
    try:
        for first in range(0, len(prompts), batch_size):
            idx, mask = left_pad(prompts[first:first + batch_size], 0, device)  # 2 x (b, T)
            try:
                model(idx, attention_mask=mask)
            except _Reached:
                pass
            states.append(torch.stack([caught[i] for i in layers], dim=1).numpy())  # (b, L, C)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return np.concatenate(states)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 200) -> tuple[np.ndarray, float]:
    """``(weight (C,), bias)`` of a logistic regression on standardised features, by L-BFGS; ``l2`` on the weight.

    Features are divided by their overall scale (one number, so the direction is not changed),
    which keeps ``l2`` meaningful whatever the layer's magnitude.
    """
    x = torch.tensor(x, dtype=torch.float64)  # (n, C)
    y = torch.tensor(y, dtype=torch.float64)  # (n,)
    weight = torch.zeros(x.size(1), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().numpy(), float(bias.detach())


@dataclass
class RefusalProbe:
    """A logistic probe on one block's output at the last prompt token; refuse at or above ``threshold``."""

    layer: int  # the block whose output is read (0 = the first)
    weight: list[float]  # (C,), applied to the state divided by ``scale``
    bias: float
    scale: float  # the typical size of a state entry at this layer (features are divided by it)
    threshold: float = 0.5  # probability from which a request is declined
    prefix: str = PREFIX

    def probabilities(self, states: np.ndarray) -> np.ndarray:
        """(n,) P(decline) from states (n, C) of block ``layer``."""
        logits = states / self.scale @ np.asarray(self.weight) + self.bias
        return 1 / (1 + np.exp(-logits))

    def score_prompts(self, model, prompts: list[list[int]]) -> np.ndarray:
        """(n,) P(decline) of every prompt (token ids that end with the generation prompt), read with adapters off."""
        with adapters(model, on=False):
            return self.probabilities(last_token_states(model, prompts, [self.layer])[:, 0])

    def score(self, model, tokenizer, conversations: list) -> np.ndarray:
        """(n,) P(decline) of every conversation (ending with the user's turn), as the model would answer it."""
        return self.score_prompts(model, [format_prompt(tokenizer, c) for c in conversations])

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "RefusalProbe | None":
        """The probe saved in ``folder``, or None when there is none (a model without one)."""
        path = Path(folder) / FILE
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None


def train_probe(states: np.ndarray, labels: np.ndarray, layer: int, l2: float = 1e-2) -> RefusalProbe:
    """A probe fitted on ``states`` (n, C) of block ``layer`` with ``labels`` (n,) 1 = decline; threshold 0.5."""
    scale = float(np.sqrt(np.mean(states.astype(np.float64) ** 2)))
    weight, bias = fit_logistic(states / scale, labels.astype(np.float64), l2)
    return RefusalProbe(layer, weight.tolist(), bias, scale)


def flag_rates(probabilities: np.ndarray, kinds: np.ndarray, threshold: float) -> dict[str, float]:
    """Per kind of request, the share the probe declines at ``threshold``."""
    return {str(kind): float(np.mean(probabilities[kinds == kind] >= threshold)) for kind in np.unique(kinds)}


def folds(groups: list[str], k: int = 5) -> np.ndarray:
    """(n,) the fold (0 .. k-1) of every item, whole groups at a time: a group's items are never split."""
    names = sorted(set(groups))
    order = np.random.default_rng(0).permutation(len(names))
    fold_of = {names[i]: rank % k for rank, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def out_of_fold(states: np.ndarray, labels: np.ndarray, fold: np.ndarray, layer: int, l2: float) -> np.ndarray:
    """(n,) each item's P(decline) from a probe fitted on the other folds: scores of requests it never saw."""
    probabilities = np.empty(len(labels))
    for f in np.unique(fold):
        held = fold == f
        probabilities[held] = train_probe(states[~held], labels[~held], layer, l2).probabilities(states[held])
    return probabilities


def choose(states: list[np.ndarray], kinds: np.ndarray, groups: list[str], layers: list[int],
           l2s: tuple[float, ...] = (1e-3, 1e-2, 1e-1), max_benign: float = 0.05) -> tuple[RefusalProbe, list[dict]]:
    """The probe to use, chosen by cross-validation over sub-topics: ``(probe, one row per layer and l2)``.

    ``states``: one (n, layers, C) array per way of asking (alone, as a later turn), in the order of
    ``kinds`` (harmful, benign, everyday) and ``groups`` (each request's sub-topic). For every
    block and L2 strength, every request is scored by a probe fitted on the *other sub-topics*
    (``out_of_fold``): the scores a new kind of request would get. The threshold is the lowest at
    which at most ``max_benign`` of the benign requests are declined (alone and later); the block
    and strength that then decline the most harmful requests win, and the final probe is fitted
    on every request with them.
    """
    labels = kinds == "harmful"
    fold = folds(list(groups))
    rows, best = [], None
    for i, layer in enumerate(layers):
        x = np.concatenate([s[:, i] for s in states])  # (ways x n, C)
        y, f = np.tile(labels, len(states)), np.tile(fold, len(states))
        for l2 in l2s:
            p = out_of_fold(x, y, f, layer, l2).reshape(len(states), -1)  # (ways, n)
            threshold = next((t for t in np.arange(0.05, 1.0, 0.01)
                              if max(flag_rates(q, kinds, t)["benign"] for q in p) <= max_benign), 0.99)
            rates = [flag_rates(q, kinds, threshold) for q in p]
            rows.append({"block": layer, "l2": l2, "threshold": round(float(threshold), 2), "chosen": False,
                         **{f"{kind} declined ({turn})": r[kind] for r, turn in zip(rates, ("alone", "later turn"))
                            for kind in ("harmful", "benign")}})
            harmful = min(r["harmful"] for r in rates)
            if best is None or harmful > best[0]:
                best = (harmful, i, layer, l2, float(threshold), len(rows) - 1)
    _, i, layer, l2, threshold, row = best
    rows[row]["chosen"] = True
    probe = train_probe(np.concatenate([s[:, i] for s in states]), np.tile(labels, len(states)), layer, l2)
    probe.threshold = round(threshold, 2)
    return probe, rows
