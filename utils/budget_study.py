"""How big a GPT for a compute budget? Measure it: the study notebook 04 runs before pretraining.

Training costs about ``C = F x D`` FLOPs: ``F = utils.model_sizes.flops_per_token(config)``
(6 per parameter and token, forward and backward, plus attention) times ``D`` tokens.
For a fixed C a bigger model sees fewer tokens. Chinchilla (Hoffmann et al. 2022,
"Training Compute-Optimal Large Language Models", Sec. 3.2, the *IsoFLOP profiles*)
trains several sizes at the same C and plots the final loss against the size: a
valley. Left of the bottom the model is too small to hold what the data teaches;
right of it, too big to see enough tokens. The bottom's *tokens per parameter*
(about 20 in their runs) stays about the same as C grows, so a cheap study at a
small C says how to spend a larger one: ``D / N = r`` and ``C = F D`` give the size.

``iso_flop_study`` trains each candidate for ``flops / flops_per_token(candidate)``
tokens with the same recipe (batch, learning rate, warm-up, cosine) and scores all of
them on the same held-out ids. The same function compares layouts (GPT-2's block
against RMSNorm + RoPE + SwiGLU) at an equal budget. Losses of models with different
tokenizers are compared in bits per byte (pass ``eval_bytes``), never in nats per token.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from utils import training
from utils.evaluation import bits_per_byte, token_losses
from utils.model import GPT, GPTConfig
from utils.model_sizes import count_parameters, flops_per_token


def tokens_for_budget(config: GPTConfig, flops: float, block_size: int | None = None) -> int:
    """How many training tokens ``flops`` buys for ``config`` (D = C / F)."""
    return int(flops / flops_per_token(config, block_size))


def steps_for_tokens(tokens: int, template: training.TrainConfig) -> int:
    """Optimizer steps that train on about ``tokens`` tokens with the template's batch (at least 1)."""
    per_step = template.batch_size * template.block_size * template.grad_accum_steps
    return max(1, round(tokens / per_step))


def train_candidate(
    name: str,
    config: GPTConfig,
    train_ids,
    eval_ids,
    steps: int,
    template: training.TrainConfig,
    warmup_fraction: float = 0.05,
    eval_bytes: int | None = None,
    seed: int = 1337,
) -> dict:
    """Train ``config`` for ``steps`` steps with the template's recipe; score it on ``eval_ids``.

    Every candidate gets the same recipe and seed: warm-up for ``warmup_fraction`` of its
    steps, then the cosine down to the template's ``min_lr``, ending at its own last step.
    The score is exact (every token of ``eval_ids``, ``utils.evaluation.token_losses``), not
    a few random batches: candidates a few hundredths apart must not be ranked by noise.
    """
    run = dataclasses.replace(
        template, max_iters=steps, warmup_iters=max(1, round(steps * warmup_fraction)), lr_decay_iters=None,
        eval_interval=steps, eval_iters=1, sample_interval=0, checkpoint=False, progress=False, verbose=False,
        seed=seed,
    )
    torch.manual_seed(seed)
    model = GPT(config)
    start = time.perf_counter()
    metrics = training.train(model, train_ids, eval_ids, run, out_dir=None)
    seconds = time.perf_counter() - start
    losses = token_losses(model, eval_ids, block_size=run.block_size)
    loss = float(losses.mean())
    parameters = count_parameters(config)
    tokens = metrics["tokens_seen"]
    row = {
        "name": name,
        "layout": config.layout,
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "vocab_size": config.vocab_size,
        "parameters": parameters,
        "steps": steps,
        "tokens": tokens,
        "tokens_per_parameter": tokens / parameters,
        "flops": float(flops_per_token(config, run.block_size)) * tokens,
        "val_loss": loss,
        "seconds": seconds,
        "tokens_per_second": metrics["tokens_per_second"],
    }
    if eval_bytes is not None:
        row["bits_per_byte"] = bits_per_byte(loss, losses.size, eval_bytes)
    return row


def iso_flop_study(
    candidates: dict[str, GPTConfig],
    train_ids,
    eval_ids,
    flops: float,
    template: training.TrainConfig,
    warmup_fraction: float = 0.05,
    eval_bytes: int | None = None,
    seed: int = 1337,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train every candidate on the same compute ``flops``; one row per candidate, in order.

    candidates: ``{name: GPTConfig}``; their ``block_size`` must be at least the template's.
    Each trains for ``tokens_for_budget(config, flops, template.block_size)`` tokens (rounded
    to whole steps of the template's batch). ``on_row(row)`` sees each row as it comes
    (to print progress). Rows: name, layout, n_layer, n_embd, vocab_size, parameters,
    steps, tokens, tokens_per_parameter, flops, val_loss (nats per token on ``eval_ids``),
    seconds, tokens_per_second, and bits_per_byte when ``eval_bytes`` (the UTF-8 bytes of
    the text ``eval_ids`` encode) is given.
    """
    if not candidates:
        raise ValueError("iso_flop_study: no candidates; give {name: GPTConfig, ...}.")
    rows = []
    for name, config in candidates.items():
        if config.block_size < template.block_size:
            raise ValueError(f"iso_flop_study: candidate {name!r} has block_size {config.block_size}, "
                             f"shorter than the training windows ({template.block_size}).")
        tokens = tokens_for_budget(config, flops, template.block_size)
        steps = steps_for_tokens(tokens, template)
        row = train_candidate(name, config, train_ids, eval_ids, steps, template, warmup_fraction, eval_bytes, seed)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def best_row(rows: list[dict], key: str = "val_loss") -> dict:
    """The row with the lowest ``key`` (val_loss, or bits_per_byte across vocabularies)."""
    return min(rows, key=lambda row: row[key])


def size_for_budget(flops: float, tokens_per_parameter: float, fixed_cost_per_token: float = 0.0) -> float:
    """The parameter count N that spends ``flops`` at ``tokens_per_parameter`` tokens per parameter.

    With F = 6 N + a (``fixed_cost_per_token``: attention's share, which grows with
    depth and context rather than N) and D = r N: C = (6 N + a) r N, a quadratic in N.
    """
    if flops <= 0 or tokens_per_parameter <= 0:
        raise ValueError(f"size_for_budget: flops={flops} and tokens_per_parameter={tokens_per_parameter} "
                         "must be positive.")
    a, r = fixed_cost_per_token, tokens_per_parameter
    return (-a + math.sqrt(a * a + 24 * flops / r)) / 12


def loss_valley(rows: list[dict], key: str = "val_loss") -> tuple[float, float] | None:
    """The bottom of a parabola through (log N, loss): (N at the bottom, loss there), or None.

    Chinchilla fits such parabolas to its IsoFLOP profiles to place the optimum between
    measured sizes. None when the points do not curve upwards (no valley to fit).
    """
    if len(rows) < 3:
        return None
    x = np.log([row["parameters"] for row in rows])
    y = np.array([row[key] for row in rows])
    a, b, c = np.polyfit(x, y, 2)
    if a <= 1e-9:  # flat or bending down (up to rounding): no bottom
        return None
    bottom = -b / (2 * a)
    return float(math.exp(bottom)), float(c - b * b / (4 * a))
