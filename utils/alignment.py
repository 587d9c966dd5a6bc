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
- ``DPOLoss`` and ``train_dpo``: DPO (optionally with the RPO term) through ``utils.training.train``,
  the course's one loop, on the top blocks only (``utils.top_blocks``).
- ``pair_rewards``, ``preference_accuracy``, ``replies_kl``: implicit rewards on pairs, and the KL to
  the reference along replies the model wrote.
- ``save_dpo`` / ``load_dpo``: the aligned model (the weights of 06, its decline adapter, its
  refusal probe, its tokenizer) in ``checkpoints/<profile>/smollm2-dpo``; ``ensure_aligned`` makes it
  (``make_aligned``: 07's recipe without the lessons) when 07 has not.
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


def scored_logprobs(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) the sum of ln p(y[b, t]) over each row's scored positions (y != -100); x, y already shifted.

    ``x`` is token ids (a GPT: logits (B, T, V)) or cached hidden states (``TopBlocks``:
    logits only at the scored positions, (N, V), row by row).
    """
    logits, _ = model(x, y)
    scored = y != IGNORE_INDEX  # (B, T)
    if logits.dim() == 3:
        logits = logits[scored]  # (N, V)
    token_logps = F.log_softmax(logits.float(), dim=-1).gather(1, y[scored][:, None])[:, 0]  # (N,)
    rows = scored.nonzero()[:, 0]  # (N,): the row of each scored position
    return torch.zeros(y.size(0), device=y.device).index_add(0, rows, token_logps)  # (B,)


class DPOLoss:
    """``batch_fn`` and ``loss_fn`` for ``utils.training.train``: DPO on pairs, and a log of every step.

    ``batches`` is a ``ChatBatches`` whose examples of each split are the n chosen replies,
    then the n rejected ones, in the same order (``utils.preferences.encode_pairs``).
    ``batch_fn`` draws ``batch_size`` pairs and hands out their chosen rows, then their
    rejected rows; ``loss_fn`` scores them, so the loop calls the two in turn, one micro-batch
    a step (as ``utils.anchor.AnchoredLoss``). Works with a GPT and with ``TopBlocks``.

    The reference log-probabilities come from the same model with its LoRA adapters switched
    off, without gradients. The reference never changes, so each reply's is computed the first
    time a batch holds it and remembered (TRL calls this precomputing the reference log-probs).
    ``history`` keeps, for every training step, the loss, the mean implicit rewards of the
    chosen and rejected replies and the share of pairs ranked right: the curves that show what
    DPO does (and whether the chosen reply's own likelihood falls). ``sft_weight`` > 0 adds the
    chosen replies' cross-entropy per token (RPO, Pang et al. 2024): DPO only widens the gap,
    this keeps the chosen reply itself likely.
    """

    def __init__(self, batches, beta: float = 0.1, sft_weight: float = 0.0):
        self.batches, self.beta, self.sft_weight = batches, beta, sft_weight
        self.pairs = {split: len(examples) // 2 for split, examples in batches.examples.items()}
        self.drawn = ("train", [])
        self.reference: dict[tuple[str, int], float] = {}
        self.history: list[dict] = []

    def batch_fn(self, split: str, generator: np.random.Generator):
        n = self.pairs[split]
        rows = [int(i) for i in generator.choice(n, size=self.batches.batch_size, replace=n < self.batches.batch_size)]
        self.drawn = (split, rows)
        return self.batches.collate(split, rows + [row + n for row in rows])  # chosen rows, then rejected

    def reference_logprobs(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(2B,) ln pi_ref of the drawn replies: remembered ones looked up, the others computed with the adapters off."""
        split, rows = self.drawn
        keys = [(split, row + side * self.pairs[split]) for side in (0, 1) for row in rows]
        missing = [i for i, key in enumerate(keys) if key not in self.reference]
        if missing:
            with torch.no_grad(), adapters_disabled(model):
                values = scored_logprobs(model, x[missing], y[missing])  # (m,)
            self.reference.update({keys[i]: value for i, value in zip(missing, values.tolist())})
        return torch.tensor([self.reference[key] for key in keys], device=y.device)  # (2B,)

    def loss_fn(self, model, batch):
        x, y = batch
        n = x.size(0) // 2  # chosen rows first, then rejected
        reference = self.reference_logprobs(model, x, y)  # (2B,), no gradient
        policy = scored_logprobs(model, x, y)  # (2B,)
        loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.beta)
        if self.sft_weight > 0:
            loss = loss - self.sft_weight * policy[:n].sum() / (y[:n] != IGNORE_INDEX).sum().clamp(min=1)
        if model.training:
            self.history.append({"loss": loss.item(), "chosen_reward": chosen.mean().item(),
                                 "rejected_reward": rejected.mean().item(),
                                 "accuracy": (chosen > rejected).float().mean().item()})
        return loss, torch.tensor(n, device=y.device)


# --------------------------------------------------------------------------- the recipe


@dataclass
class DPOConfig:
    """DPO's recipe; ``dpo_config(profile)`` takes the sizes from the profile."""

    max_iters: int = 30  # optimizer steps
    batch_size: int = 4  # pairs per step
    beta: float = 0.1  # how far the policy may move from the reference (smaller: further)
    sft_weight: float = 0.0  # RPO: + this x the chosen replies' cross-entropy (0 = plain DPO)
    lora_rank: int = 8  # r of each adapter
    lora_layers: int = 8  # adapt the last N blocks (SmolLM2 has 30)
    learning_rate: float = 1e-3  # peak (dev: 5e-4 on 4 blocks left the decline's words unlearned in 30 steps)
    warmup_iters: int = 3
    # Compute the frozen blocks' outputs once per reply (True), or at every step (False). Once pays
    # when every reply is drawn several times; with more replies than draws it is work thrown away.
    cache_frozen_blocks: bool = True
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
    from utils.finetune import apply_lora, lora_targets

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


def train_dpo(model, batches, cfg: DPOConfig) -> tuple[dict, DPOLoss]:
    """DPO = ``utils.training.train`` with ``DPOLoss``: (the loop's metrics, the loss with its log).

    ``model`` carries LoRA adapters on its last ``cfg.lora_layers`` blocks (``add_lora``);
    ``batches`` a ``ChatBatches`` of chosen then rejected replies (``utils.preferences.encode_pairs``).
    As in Make it yours, only the top blocks train (``utils.top_blocks``): the frozen blocks'
    outputs are computed once per reply, and the reference is the same top with adapters off.
    """
    from utils.top_blocks import TopBlocks, block_inputs

    gpt = ckpt.unwrap(model)
    top = TopBlocks(gpt, cfg.lora_layers if cfg.cache_frozen_blocks else gpt.config.n_layer)
    states = {split: block_inputs(gpt, [ids[:-1] for ids, _ in examples], top.first)
              for split, examples in batches.examples.items()}
    loss = DPOLoss(batches.with_states(states), cfg.beta, cfg.sft_weight)
    longest = max(len(ids) for examples in batches.examples.values() for ids, _ in examples)
    metrics = training.train(top, cfg=train_config(cfg, longest), batch_fn=loss.batch_fn, loss_fn=loss.loss_fn)
    return metrics, loss


# --------------------------------------------------------------------------- measuring


def pad_right(examples: list[tuple], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` rows padded on the right to one width, labels -100 on the padding: 2 x (N, T)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (N, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (N, T)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, :len(ids)], labels[row, :len(labs)] = torch.tensor(ids), torch.tensor(labs)
    return input_ids, labels


@torch.no_grad()
def logprobs(model, examples: list[tuple], pad_id: int, batch_size: int = 16) -> np.ndarray:
    """(n,) ``sequence_logprobs`` of every ``(input_ids, labels)`` example: ln pi of its reply, in padded batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for first in range(0, len(examples), batch_size):
        input_ids, labels = pad_right(examples[first:first + batch_size], pad_id)
        out.append(sequence_logprobs(model, input_ids.to(device), labels.to(device)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


@dataclass
class PairRewards:
    """Implicit rewards of pairs: beta * ln(pi / pi_ref) of each reply, and ln pi itself."""

    chosen: np.ndarray  # (n,)
    rejected: np.ndarray  # (n,)
    policy_chosen: np.ndarray  # (n,) ln pi(chosen)
    policy_rejected: np.ndarray  # (n,)

    @property
    def margins(self) -> np.ndarray:
        return self.chosen - self.rejected


def pair_rewards(model, examples: list[tuple], pad_id: int, beta: float, reference: np.ndarray) -> PairRewards:
    """The implicit rewards of ``model`` on pairs (``encode_pairs``: n chosen, then n rejected examples).

    ``reference``: ``logprobs`` of the same examples under the reference model, computed once.
    """
    policy, n = logprobs(model, examples, pad_id), len(examples) // 2
    ratio = beta * (policy - reference)
    return PairRewards(ratio[:n], ratio[n:], policy[:n], policy[n:])


def preference_accuracy(rewards: PairRewards) -> float:
    """The share of pairs whose chosen reply gets the larger reward; a tie counts half (0.5 = no preference)."""
    margins = rewards.margins
    return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


@torch.no_grad()
def reply_kl(model, reference, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) KL(pi || pi_ref) summed over each reply's positions, along the reply actually written.

    At every position t of a reply, both models see the same text before it, and the KL of
    their next-token distributions is computed exactly over the whole vocabulary:
    sum_v pi(v) (ln pi(v) - ln pi_ref(v)). Summed over the reply's tokens, averaged over
    replies the policy wrote, it estimates the sequence-level KL that DPO's beta keeps small.
    ``reference``: the reference model, or None for ``model`` with its adapters switched off.
    """
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): positions that predict a reply token
    policy = F.log_softmax(model_logits(model, input_ids)[:, :-1].float(), dim=-1)  # (B, T-1, V)
    with contextlib.nullcontext() if reference is not None else adapters_disabled(model):
        logits = model_logits(reference if reference is not None else model, input_ids)
    before = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    kl = (policy.exp() * (policy - before)).sum(-1)  # (B, T-1)
    return (kl * scored).sum(dim=1)  # (B,)


def replies_kl(model, reference, replies: list[tuple], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """``reply_kl`` of every ``(input_ids, labels)`` reply, in padded batches: (n,)."""
    device = next(model.parameters()).device
    kl = []
    for first in range(0, len(replies), batch_size):
        input_ids, labels = pad_right(replies[first:first + batch_size], pad_id)
        kl.append(reply_kl(model, reference, input_ids.to(device), labels.to(device)).cpu())
    return torch.cat(kl).numpy()


# --------------------------------------------------------------------------- the checkpoint


def dpo_dir(cfg) -> Path:
    return cfg.paths.checkpoints / DPO


ADAPTER_FILE = "decline_adapter.safetensors"  # the LoRA weights used while declining


def save_dpo(model, tokenizer, folder: str | os.PathLike, probe, report: dict) -> Path:
    """The aligned model: base weights, its decline adapter, its refusal probe, tokenizer and ``dpo.json`` (last).

    ``model`` carries the LoRA adapters DPO trained, *not* merged: ``model.safetensors`` holds the
    weights without them (those of 06), ``decline_adapter.safetensors`` the adapters, and the report
    how to put them back (``"adapter"``: r, alpha, targets). ``probe``: the ``RefusalProbe`` that
    decides when the adapters are on (None: a model without one).
    """
    from safetensors.torch import save_file

    from utils.finetune import lora_weights, without_lora
    from utils.refusal_probe import FILE

    folder = Path(folder)
    (folder / REPORT_FILE).unlink(missing_ok=True)  # incomplete until the very end, probe and adapter included
    for name in (FILE, ADAPTER_FILE):
        (folder / name).unlink(missing_ok=True)  # left by an earlier run, they do not belong to these weights
    folder.mkdir(parents=True, exist_ok=True)
    weights = lora_weights(model)
    if weights:
        save_file({name: w.contiguous().cpu() for name, w in weights.items()}, str(folder / ADAPTER_FILE))
        report = {**report, "adapter": adapter_config(model)}
    if probe is not None:
        probe.save(folder)
    return ckpt.save_finetuned(without_lora(model) if weights else model, tokenizer, folder, REPORT_FILE, report,
                               "SmolLM2-135M-Instruct, made yours (the aligned model's base)")


def adapter_config(model) -> dict:
    """r, alpha and the adapted layers of ``model``'s LoRA adapters: what ``load_dpo`` needs to add them again."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in ckpt.unwrap(model).named_modules() if isinstance(m, LoraLayer)}
    first = next(iter(layers.values()))
    r = first.r["default"]
    return {"r": r, "alpha": int(round(first.scaling["default"] * r)), "targets": sorted(layers)}


def load_dpo(folder: str | os.PathLike, device: str = "cpu"):
    """``(model, tokenizer, report)`` from a folder written by ``save_dpo`` (notebook 07 makes it), adapters included, off.

    Its refusal probe: ``utils.refusal_probe.RefusalProbe.load(folder)``.
    """
    from safetensors.torch import load_file

    from utils.finetune import load_lora

    model, tokenizer, report = ckpt.load_finetuned(folder, REPORT_FILE, "run notebook 07_alignment first", device)
    if "adapter" in report:
        adapter = report["adapter"]
        load_lora(model, load_file(str(Path(folder) / ADAPTER_FILE), device=str(device)), adapter["r"],
                  adapter["alpha"], adapter["targets"])
        for layer in adapter_layers(model):  # off: the weights of 06, except while the probe's declines are written
            layer.enable_adapters(False)     # (utils.replies switches them on there); likelihoods score the same model
        model.eval()
    return model, tokenizer, report


# --------------------------------------------------------------------------- the recipe end to end


def make_aligned(cfg, log=print) -> tuple:
    """07's recipe without the lessons: ``(model, tokenizer, probe)``, saved in ``checkpoints/<profile>/smollm2-dpo``.

    From the model of 06 (``utils.identity.ensure_yours``): a refusal probe fitted on the training
    and dev requests, alone and as a later turn, its block and threshold chosen by cross-validation
    over sub-topics (``refusal_probe.choose``); DPO pairs on the harmful training requests (the
    words after the probe's prefix; ``utils.preferences``); DPO with the RPO term through
    ``train_dpo`` into a decline adapter, saved with the probe. Later notebooks call
    ``ensure_aligned``, which runs this when 07 has not.
    """
    import dataclasses

    from utils import preferences as prefs
    from utils import refusal_probe as rp
    from utils.identity import REPORT_FILE as YOURS_REPORT
    from utils.identity import ensure_yours, yours_dir

    p = cfg.profile
    model, tokenizer = ensure_yours(cfg)
    model.eval()
    train = prefs.take(prefs.load_requests("train"), p.align_per_area, p.align_everyday)
    requests = train + prefs.load_requests("dev")
    exchanges = prefs.first_exchanges(model, tokenizer, [r for r in requests if r.kind == "everyday"][:6],
                                      p.align_max_new_tokens)
    layers = list(p.probe_layers)
    states = [rp.last_token_states(model, prefs.prompts_of(tokenizer, requests, e), layers) for e in (None, exchanges)]
    probe, _ = rp.choose(states, np.array([r.kind for r in requests]), [f"{r.kind}: {r.subtopic}" for r in requests],
                         layers)
    log(f"Refusal probe: block {probe.layer}, threshold {probe.threshold:.2f} (cross-validated over sub-topics)")
    harmful = [r for r in train if r.kind == "harmful"]
    continuation = prefs.own_replies(model, tokenizer, harmful, probe.prefix, p.align_max_new_tokens)
    pairs = prefs.preference_pairs(harmful, continuation, probe.prefix)
    encoded, n = prefs.encode_pairs(tokenizer, pairs), len(pairs)
    held = set(range(0, n, 10))
    rows = lambda keep: [encoded[i] for i in keep] + [encoded[n + i] for i in keep]  # chosen rows, then rejected
    dpo_cfg = dataclasses.replace(dpo_config(p, cfg.seed, cfg.device), sft_weight=p.dpo_sft_weight, progress=False)
    add_lora(model, dpo_cfg)
    log(f"DPO on {n} pairs, {dpo_cfg.max_iters} steps ...")
    metrics, loss = train_dpo(model, _chat_batches(rows([i for i in range(n) if i not in held]), rows(sorted(held)),
                                                   dpo_cfg.batch_size, tokenizer.pad_token_id), dpo_cfg)
    who = json.loads((yours_dir(cfg) / YOURS_REPORT).read_text(encoding="utf-8"))["identity"]
    save_dpo(model.eval(), tokenizer, dpo_dir(cfg), probe,
             {"identity": who, "config": dataclasses.asdict(dpo_cfg), "history": loss.history})
    return model, tokenizer, probe


def _chat_batches(train_examples, val_examples, batch_size: int, pad_id: int):
    from utils.identity_data import ChatBatches

    return ChatBatches(train_examples, val_examples, batch_size, pad_id)


def ensure_aligned(cfg, device: str | None = None) -> tuple:
    """``(model, tokenizer, probe)`` of the profile's aligned SmolLM2; made first (with a message) when missing."""
    from utils.refusal_probe import RefusalProbe

    folder = dpo_dir(cfg)
    if not (folder / REPORT_FILE).exists():
        print(f"No aligned model in {folder.relative_to(folder.parents[2])} yet: aligning the model of 06 now "
              "(what notebook 07 does) ...")
        make_aligned(cfg)
    model, tokenizer, _ = load_dpo(folder, device or cfg.device)
    return model, tokenizer, RefusalProbe.load(folder)
