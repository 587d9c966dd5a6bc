"""DPO from scratch (07): learning from preferences with one loss, a reference model and no reward model.

Notebook 07 builds each piece by hand and then uses these:

- ``sequence_logprobs(model, input_ids, labels)``: per sequence, the sum of ln p of the
  tokens whose label is not -100 (the reply), labels aligned with the ids, shifted here.
- ``dpo_loss(...)``: -ln sigmoid(beta * (chosen log-ratio - rejected log-ratio)), averaged over
  pairs, with the implicit rewards beta * ln(pi / pi_ref) of both replies (Rafailov et al., 2023).
  ``tests/test_alignment.py`` proves it equal to TRL's ``DPOTrainer`` on the same batch.
- ``adapters_disabled(model)``: the reference model is the policy with its LoRA adapters
  switched off (peft's ``enable_adapters(False)`` on every adapted layer), so there is no
  second copy of the weights in memory.
- ``PreferenceBatches`` and ``DPOLoss``: a ``batch_fn`` and a ``loss_fn`` for
  ``utils.training.train``, the course's one training loop.
- ``pair_rewards``, ``preference_accuracy``, ``reply_kl``: what the notebook measures before
  and after: implicit rewards on held-out pairs and the KL to the reference on sampled replies.
- ``save_dpo`` / ``load_dpo``: the merged model with its tokenizer in
  ``checkpoints/<profile>/smollm2-dpo``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils import checkpoint as ckpt
from utils import training
from utils.chat_spans import IGNORE_INDEX
from utils.evaluation import model_logits
from utils.io import write_json_atomically

DPO = "smollm2-dpo"  # the folder under cfg.paths.checkpoints
REPORT_FILE = "dpo.json"  # written last: a folder without it is incomplete


# --------------------------------------------------------------------------- the two contract functions


def sequence_logprobs(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) the sum of ln p(token | the tokens before it) over every position whose label is not -100.

    ``labels`` are aligned with ``input_ids`` (B, T): ``labels[b, t]`` is the token at t, or
    -100 where it is not scored (system, prompt, padding). The logits at position t predict
    the token at t + 1, so they are scored against ``labels[:, 1:]``: the shift happens here.
    Works with our GPT and with a ``transformers`` causal LM.
    """
    logits = model_logits(model, input_ids)[:, :-1, :].float()  # (B, T-1, V): position t predicts t + 1
    targets = labels[:, 1:]  # (B, T-1)
    B, T, V = logits.shape
    # Rows of (B*(T-1), V): the softmax runs along the last, contiguous dimension. (On the (B, V, T) layout
    # cross_entropy also accepts, PyTorch's CPU softmax is about ten times less precise: 1e-3 on a reply.)
    token_logps = -F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), ignore_index=IGNORE_INDEX,
                                   reduction="none").view(B, T)  # (B, T-1), 0 where the target is -100
    return token_logps.sum(dim=1)  # (B,)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen_rewards, rejected_rewards) of a batch of pairs, each (B,) log-probability.

    The implicit reward of a reply is beta * ln(pi(reply) / pi_ref(reply)); the loss is the
    Bradley-Terry negative log-likelihood that the chosen reply wins, -ln sigmoid(r_chosen -
    r_rejected), averaged over the pairs. The rewards are returned detached (for watching).
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - reference_rejected_logps  # (B,)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # (B,)
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# --------------------------------------------------------------------------- the reference model


def adapter_layers(model) -> list:
    """Every peft tuner layer (LoRA) inside ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model):
    """Inside the block, ``model`` computes as if it had no adapters: the reference model of DPO.

    peft's ``enable_adapters(False)`` makes each LoRA layer return its frozen base layer's
    output alone; ``enable_adapters(True)`` afterwards switches them back on (and makes the
    adapter weights trainable again). No weights are copied.
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("adapters_disabled: this model has no LoRA adapters, so the policy would be its own "
                         "reference; add them first (utils.finetune.apply_lora).")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


# --------------------------------------------------------------------------- batches and the loss for training.train


def collate_pairs(pairs: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask), each (2B, T): the B chosen rows, then the B rejected rows.

    Rows are padded on the right (the causal mask keeps real tokens from seeing padding),
    labels -100 on padding. The same layout as TRL's ``DataCollatorForPreference``.
    """
    rows = [(p["chosen_ids"], p["chosen_labels"]) for p in pairs] + \
           [(p["rejected_ids"], p["rejected_labels"]) for p in pairs]
    return pad_rows(rows, pad_id)


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask), each (N, T): ``(ids, labels)`` rows padded on the right, labels -100."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (2B, T)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (2B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (2B, T)
    for row, (ids, labs) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(ids)] = 1
    return input_ids, labels, mask


class PreferenceBatches:
    """``batch_fn(split, generator) -> (input_ids, labels, mask)`` of ``batch_size`` pairs, for ``training.train``.

    Pairs are drawn without replacement within a batch (with replacement only when a split
    has fewer pairs than a batch), so every batch has the same number of pairs: the loop
    weighs a loss_fn's micro-batches equally.
    """

    def __init__(self, train_pairs: list[dict], val_pairs: list[dict], batch_size: int, pad_id: int):
        for name, pairs in (("train", train_pairs), ("val", val_pairs)):
            if not pairs:
                raise ValueError(f"PreferenceBatches: no {name} pairs; make more (more prompts or samples) or "
                                 "check that encode_pairs did not leave them all out (max_length).")
        self.pairs = {"train": train_pairs, "val": val_pairs}
        self.batch_size, self.pad_id = batch_size, pad_id

    def __call__(self, split: str, generator: np.random.Generator):
        pairs = self.pairs[split]
        rows = generator.choice(len(pairs), size=self.batch_size, replace=len(pairs) < self.batch_size)
        return collate_pairs([pairs[int(i)] for i in rows], self.pad_id)

    def longest(self) -> int:
        return max(len(p[k]) for split in self.pairs.values() for p in split for k in ("chosen_ids", "rejected_ids"))


@dataclass
class DPOLoss:
    """``loss_fn(model, (input_ids, labels)) -> (loss, pairs)`` for ``training.train``, and a log of each step.

    The reference log-probabilities come from the same model with its adapters switched off,
    without gradients; the policy's with them on. The reference never changes, so each
    reply's reference log-probability is computed the first time a batch holds it and
    remembered (``reference_cache``, keyed by the reply's tokens): a pair drawn again costs
    only the policy's pass (TRL calls this precomputing the reference log-probs).
    ``history`` keeps, for every training call, the loss, the mean implicit rewards of the
    chosen and the rejected replies and the share of pairs ranked right: the curves that show
    what DPO does (and whether the chosen reply's own likelihood falls).
    """

    beta: float = 0.1
    history: list[dict] = field(default_factory=list)
    reference_cache: dict[tuple, float] = field(default_factory=dict)

    def reference_logprobs(self, model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(2B,) ln pi_ref of each row: remembered ones looked up, the others computed with the adapters off."""
        scored = labels != IGNORE_INDEX  # (2B, T)
        ends = scored.size(1) - scored.flip(1).int().argmax(dim=1)  # (2B,): just after each row's last scored token
        keys = [tuple(row[:end].tolist()) for row, end in zip(input_ids, ends.tolist())]
        missing = sorted({i for i, key in enumerate(keys) if key not in self.reference_cache})
        if missing:
            with torch.no_grad(), adapters_disabled(model):
                values = sequence_logprobs(model, input_ids[missing], labels[missing])  # (m,)
            self.reference_cache.update({keys[i]: value for i, value in zip(missing, values.tolist())})
        return torch.tensor([self.reference_cache[key] for key in keys], device=input_ids.device)  # (2B,)

    def __call__(self, model, batch):
        input_ids, labels = batch
        n = input_ids.size(0) // 2  # chosen rows first, then rejected
        reference = self.reference_logprobs(model, input_ids, labels)  # (2B,), no gradient
        policy = sequence_logprobs(model, input_ids, labels)  # (2B,)
        loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta)
        if model.training:
            self.history.append({"loss": loss.item(), "chosen_reward": chosen.mean().item(),
                                 "rejected_reward": rejected.mean().item(),
                                 "accuracy": (chosen > rejected).float().mean().item()})
        return loss, torch.tensor(n, device=input_ids.device)


# --------------------------------------------------------------------------- the recipe


@dataclass
class DPOConfig:
    """DPO's recipe; ``dpo_config(profile)`` takes the sizes from the profile."""

    max_iters: int = 30  # optimizer steps
    batch_size: int = 4  # pairs per step
    beta: float = 0.1  # how far the policy may move from the reference (smaller: further)
    lora_rank: int = 8  # r of each adapter
    lora_layers: int = 8  # adapt the last N blocks (SmolLM2 has 30)
    learning_rate: float = 5e-4  # peak; LoRA adapters take a larger rate than full fine-tuning
    warmup_iters: int = 3
    seed: int = 1337
    progress: bool = True
    device: str = "cpu"


def dpo_config(profile, seed: int = 1337, device: str = "cpu") -> DPOConfig:
    """The profile's DPO budget (fields ``dpo_*`` of ``utils.config.Profile``)."""
    return DPOConfig(max_iters=profile.dpo_max_iters, batch_size=profile.dpo_batch_size, beta=profile.dpo_beta,
                     lora_rank=profile.dpo_lora_rank, lora_layers=profile.dpo_lora_layers, seed=seed,
                     progress=profile.progress, device=device)


def add_lora(model, cfg: DPOConfig):
    """Fresh LoRA adapters (alpha = 2r) on the last ``cfg.lora_layers`` blocks; B starts at 0, so policy = reference."""
    from utils.finetune import apply_lora
    from utils.identity import lora_targets

    return apply_lora(model, r=cfg.lora_rank, alpha=2 * cfg.lora_rank,
                      target_modules=lora_targets(model, cfg.lora_layers))


def train_config(cfg: DPOConfig, block_size: int) -> training.TrainConfig:
    """``cfg`` as the loop's config: no weight decay (it would pull the adapters to 0), one validation at the end."""
    return training.TrainConfig(
        batch_size=cfg.batch_size, block_size=block_size, max_iters=cfg.max_iters,
        learning_rate=cfg.learning_rate, min_lr=cfg.learning_rate / 10,
        warmup_iters=min(cfg.warmup_iters, max(0, cfg.max_iters - 1)), weight_decay=0.0,
        eval_interval=cfg.max_iters, eval_iters=1, log_interval=1, checkpoint=False,
        progress=cfg.progress, verbose=False, device=cfg.device, seed=cfg.seed,
    )


def train_dpo(model, batches: PreferenceBatches, cfg: DPOConfig) -> tuple[dict, DPOLoss]:
    """DPO = ``utils.training.train`` with preference batches and ``DPOLoss``; (the loop's metrics, the loss's log)."""
    loss_fn = DPOLoss(cfg.beta)
    metrics = training.train(model, cfg=train_config(cfg, batches.longest()), batch_fn=batches, loss_fn=loss_fn)
    return metrics, loss_fn


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def pair_logprobs(model, pairs: list[dict], pad_id: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) summed log-probabilities of every pair's replies under ``model``, each (n,)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first:first + batch_size]
        input_ids, labels, _ = collate_pairs(chunk, pad_id)
        device = next(model.parameters()).device
        logps = sequence_logprobs(model, input_ids.to(device), labels.to(device)).cpu()
        chosen.append(logps[:len(chunk)])
        rejected.append(logps[len(chunk):])
    model.train(was_training)
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


@dataclass
class PairRewards:
    """Implicit rewards of held-out pairs: beta * ln(pi / pi_ref) of each reply."""

    chosen: np.ndarray  # (n,)
    rejected: np.ndarray  # (n,)
    policy_chosen: np.ndarray  # (n,) ln pi(chosen)
    policy_rejected: np.ndarray  # (n,)

    @property
    def margins(self) -> np.ndarray:
        return self.chosen - self.rejected


def pair_rewards(model, pairs: list[dict], pad_id: int, beta: float, reference=None) -> PairRewards:
    """The policy's implicit rewards on ``pairs``; ``reference``: (chosen, rejected) log-probs already computed."""
    if reference is None:
        with adapters_disabled(model):
            reference = pair_logprobs(model, pairs, pad_id)
    policy = pair_logprobs(model, pairs, pad_id)
    return PairRewards(beta * (policy[0] - reference[0]), beta * (policy[1] - reference[1]), *policy)


def preference_accuracy(rewards: PairRewards) -> float:
    """The share of pairs whose chosen reply gets the larger reward; a tie counts half (0.5 = no preference)."""
    margins = rewards.margins
    return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


@torch.no_grad()
def reply_kl(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) KL(pi || pi_ref) summed over each reply's positions, along the reply actually written.

    At every position t of a reply, both models see the same text before it, and the KL of
    their next-token distributions is computed exactly over the whole vocabulary:
    sum_v pi(v) (ln pi(v) - ln pi_ref(v)). Summed over the reply's tokens, averaged over
    replies sampled from the policy, it estimates the sequence-level KL that DPO's beta keeps
    small (exactly so when they are sampled at temperature 1 without top-k).
    """
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): positions that predict a reply token
    policy = F.log_softmax(model_logits(model, input_ids)[:, :-1].float(), dim=-1)  # (B, T-1, V)
    with adapters_disabled(model):
        reference = F.log_softmax(model_logits(model, input_ids)[:, :-1].float(), dim=-1)  # (B, T-1, V)
    kl = (policy.exp() * (policy - reference)).sum(-1)  # (B, T-1)
    return (kl * scored).sum(dim=1)  # (B,)


def replies_kl(model, replies: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """``reply_kl`` of every ``(ids, labels)`` reply (``preferences.encode_reply``), in padded batches: (n,)."""
    device = next(model.parameters()).device
    kl = []
    for first in range(0, len(replies), batch_size):
        input_ids, labels, _ = pad_rows(replies[first:first + batch_size], pad_id)
        kl.append(reply_kl(model, input_ids.to(device), labels.to(device)).cpu())
    return torch.cat(kl).numpy()


# --------------------------------------------------------------------------- the checkpoint


def dpo_dir(cfg) -> Path:
    return cfg.paths.checkpoints / DPO


def save_dpo(model, tokenizer, folder: str | os.PathLike, report: dict) -> Path:
    """The merged GPT (safetensors), its tokenizer in ``folder/tokenizer`` and ``dpo.json``, written last."""
    folder = Path(folder)
    (folder / REPORT_FILE).unlink(missing_ok=True)  # incomplete until the very end
    ckpt.save_model(model, folder, tokenizer_name="SmolLM2-135M-Instruct, made yours, then DPO",
                    vocab_size=len(tokenizer))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    write_json_atomically(folder / REPORT_FILE, report)
    return folder


def load_dpo(folder: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer, report)`` from a folder written by ``save_dpo`` (notebook 07 makes it)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / REPORT_FILE).exists():
        raise FileNotFoundError(f"{folder / REPORT_FILE} does not exist: {folder} holds no finished DPO model; "
                                "run notebook 07_alignment first.")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    model = ckpt.load_checkpoint(folder, tokenizer=tokenizer, device=device)
    return model, tokenizer, json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
