"""How big a GPT for a compute budget? Measure it: the study notebook 04 runs after pretraining.

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

Each candidate gets its own peak learning rate (``learning_rates``): one rate for every size
would mostly measure which size that rate suits. Candidates are independent, so on a CPU
they train side by side in ``workers`` processes of one thread each: small models use a
second thread poorly, and two of them on two cores finish in about half the time.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

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
        "learning_rate": run.learning_rate,
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


def _one_thread(_=None) -> None:
    torch.set_num_threads(1)


def _train_in_worker(args: tuple) -> dict:
    torch.set_num_threads(1)  # one process per core: its own thread only
    return train_candidate(*args)


def default_workers(device: str, n_candidates: int) -> int:
    """Processes for ``iso_flop_study``: one per CPU core (at most one per candidate); 1 on a GPU."""
    if device != "cpu":
        return 1
    return max(1, min(n_candidates, os.cpu_count() or 1))


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
    learning_rates: dict[str, float] | None = None,
    workers: int = 1,
) -> list[dict]:
    """Train every candidate on the same compute ``flops``; one row per candidate, in order.

    candidates: ``{name: GPTConfig}``; their ``block_size`` must be at least the template's.
    Each trains for ``tokens_for_budget(config, flops, template.block_size)`` tokens (rounded
    to whole steps of the template's batch). ``on_row(row)`` sees each row as it comes
    (to print progress). Rows: name, layout, n_layer, n_embd, vocab_size, parameters,
    steps, tokens, tokens_per_parameter, flops, val_loss (nats per token on ``eval_ids``),
    seconds, tokens_per_second, learning_rate, and bits_per_byte when ``eval_bytes`` (the UTF-8
    bytes of the text ``eval_ids`` encode) is given.

    ``learning_rates``: ``{name: peak}`` for candidates that should not use the template's
    (``min_lr`` keeps the template's ratio to the peak). ``workers`` > 1 trains candidates in
    that many processes of one thread each (``default_workers``); rows and ``on_row`` calls
    still come in the candidates' order, and each row is what a run alone would give.
    """
    if not candidates:
        raise ValueError("iso_flop_study: no candidates; give {name: GPTConfig, ...}.")
    jobs = []
    for name, config in candidates.items():
        if config.block_size < template.block_size:
            raise ValueError(f"iso_flop_study: candidate {name!r} has block_size {config.block_size}, "
                             f"shorter than the training windows ({template.block_size}).")
        tokens = tokens_for_budget(config, flops, template.block_size)
        steps = steps_for_tokens(tokens, template)
        recipe = template
        if learning_rates and name in learning_rates:  # its own peak; the floor stays a tenth of it
            lr = learning_rates[name]
            recipe = dataclasses.replace(template, learning_rate=lr, min_lr=lr * template.min_lr / template.learning_rate)
        jobs.append((name, config, train_ids, eval_ids, steps, recipe, warmup_fraction, eval_bytes, seed))
    rows = []
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            rows.append(train_candidate(*job))
            if on_row is not None:
                on_row(rows[-1])
        return rows
    # The most steps first, so that the workers finish together; rows come back in the candidates' order.
    order = sorted(range(len(jobs)), key=lambda j: -jobs[j][4])
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread) as pool:
        futures = {j: pool.submit(_train_in_worker, jobs[j]) for j in order}
        for j in range(len(jobs)):
            rows.append(futures[j].result())
            if on_row is not None:
                on_row(rows[-1])
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


def finding(rows: list[dict], flops: float, valley: tuple[float, float] | None = None) -> str:
    """One sentence: where the lowest loss lies among ``rows`` (sizes at the same ``flops``), and whether the
    valley's bottom lies inside the sizes tried (the loss rises on both sides) or beyond them."""
    rows = sorted(rows, key=lambda row: row["parameters"])
    best = best_row(rows)
    at = rows.index(best)
    head = (f"At {flops:.2g} FLOPs each, the lowest validation loss is {best['name']}'s ({best['val_loss']:.3f}: "
            f"{best['parameters']:,} parameters, {best['tokens_per_parameter']:.1f} tokens per parameter)")
    if at == 0 or at == len(rows) - 1:
        side = "smallest" if at == 0 else "largest"
        return (f"{head}, the {side} size tried: the bottom of the valley lies beyond the sizes tried; "
                f"try {'smaller' if at == 0 else 'larger'} shapes.")
    left, right = rows[at - 1], rows[at + 1]
    tail = ""
    if valley is not None and rows[0]["parameters"] <= valley[0] <= rows[-1]["parameters"]:
        tail = f"; the parabola through the points bottoms out at about {valley[0]:,.0f} parameters"
    return (f"{head}; the loss rises on both sides ({left['name']} +{left['val_loss'] - best['val_loss']:.3f}, "
            f"{right['name']} +{right['val_loss'] - best['val_loss']:.3f}), so the valley's bottom lies inside "
            f"the sizes tried{tail}.")
