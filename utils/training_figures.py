"""The pictures of notebook 04 (pretraining), drawn here so that the notebook shows the idea.

- ``shift_diagram``: one window of tokens, the inputs and the targets one step ahead.
- ``accumulation_diagram``: k micro-batches add their gradients, then one optimizer step.
- ``learning_rate_schedule``: warm-up, then cosine, as the trainer computes it.
- ``loss_curves``: training and validation loss of a run (the trainer's metrics).
- ``iso_flop_profile``: the size study: validation loss against size at equal compute.

(Data parallelism across GPUs is drawn as an SVG by ``notebooks/figures/ddp.py``.)
Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

INPUT, TARGET, STEP = "#bfdbfe", "#fed7aa", "#bbf7d0"


def _box(ax, x, y, w, h, text, colour, fontsize=9, **style):
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", linewidth=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, **style)


def shift_diagram(pieces: list[str]):
    """A window of T + 1 token pieces: inputs are the first T, targets the last T, one step ahead.

    ``pieces``: the window's tokens as text (``tokenizer.decode([id])`` each).
    """
    T = len(pieces) - 1
    fig, ax = plt.subplots(figsize=(min(1.05 * (T + 1) + 1.6, 14), 2.6))
    ax.set_xlim(-1.6, T + 1)
    ax.set_ylim(-0.4, 2.9)
    ax.axis("off")

    def label(piece):
        return repr(piece)[1:-1].replace(" ", "␣") or "∅"

    for t in range(T):
        _box(ax, t + 0.05, 1.8, 0.9, 0.6, label(pieces[t]), INPUT, fontsize=8, family="monospace")
        _box(ax, t + 0.05, 0.2, 0.9, 0.6, label(pieces[t + 1]), TARGET, fontsize=8, family="monospace")
        ax.annotate("", xy=(t + 0.5, 0.8), xytext=(t + 0.5, 1.8), arrowprops={"arrowstyle": "->", "color": "gray"})
        ax.text(t + 0.5, 2.55, str(t), ha="center", fontsize=7, color="gray")
    ax.text(-0.15, 2.1, "x = window[:-1]", ha="right", va="center", fontsize=9)
    ax.text(-0.15, 0.5, "y = window[1:]", ha="right", va="center", fontsize=9)
    ax.text(T / 2, -0.3, "position t sees x[0..t] (the causal mask) and is scored on y[t], the token after x[t]",
            ha="center", fontsize=9)
    fig.tight_layout()
    return fig


def accumulation_diagram(k: int = 4):
    """k micro-batches: each loss / k, backward adds into .grad; then one clip and one optimizer step."""
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 3.4)
    ax.axis("off")
    width = 8.0 / k
    for i in range(k):
        x = 0.2 + i * width
        _box(ax, x, 2.3, width - 0.25, 0.7, f"micro-batch {i + 1}\nB sequences", INPUT, fontsize=8.5)
        _box(ax, x, 1.2, width - 0.25, 0.7, f"(loss / {k}).backward()", TARGET, fontsize=8.5)
        ax.annotate("", xy=(x + (width - 0.25) / 2, 1.9), xytext=(x + (width - 0.25) / 2, 2.3),
                    arrowprops={"arrowstyle": "->"})
        ax.annotate("", xy=(4.2, 0.75), xytext=(x + (width - 0.25) / 2, 1.2), arrowprops={"arrowstyle": "->"})
    _box(ax, 1.6, 0.15, 5.2, 0.6, f".grad = sum of the {k} gradients / {k} = the gradient of one batch of {k}B",
         "white", fontsize=8.5)
    _box(ax, 8.4, 0.15, 2.4, 0.6, "clip, optimizer.step(),\nzero_grad()", STEP, fontsize=8.5)
    ax.annotate("", xy=(8.4, 0.45), xytext=(6.8, 0.45), arrowprops={"arrowstyle": "->"})
    ax.text(9.6, 1.6, f"one step per {k} micro-batches:\nmemory of B sequences,\ngradient of {k}B", ha="center",
            fontsize=9)
    fig.tight_layout()
    return fig


def learning_rate_schedule(steps, rates, warmup_iters: int):
    """The learning rate at every step, with the end of the warm-up and the floor marked."""
    rates = np.asarray(rates)
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(steps, rates, color="tab:blue")
    ax.axvline(warmup_iters, color="gray", linestyle=":")
    ax.annotate(f"warm-up ends at step {warmup_iters}: peak {rates.max():.1e}", (warmup_iters, rates.max()),
                xytext=(10, -12), textcoords="offset points", fontsize=8)
    ax.annotate(f"cosine down to {rates[-1]:.1e}", (steps[-1], rates[-1]), xytext=(-110, 12),
                textcoords="offset points", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("warm-up, then cosine")
    fig.tight_layout()
    return fig


def loss_curves(metrics: dict, title: str = "pretraining"):
    """The training loss of every logged step and the validation estimates, from the trainer's metrics."""
    history, evals = metrics["history"], metrics["evals"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train (one batch)", alpha=0.6)
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def iso_flop_profile(rows: list[dict], flops: float, valley=None, chosen: str | None = None):
    """Validation loss against parameters (log) for candidates trained on the same ``flops``.

    Each point is labelled with its shape and tokens per parameter; the lowest is starred; ``valley``
    (``budget_study.loss_valley``'s (parameters, loss)) draws the fitted parabola and its bottom;
    ``chosen`` names a candidate to ring (the profile's own shape).
    """
    params = np.array([row["parameters"] for row in rows], dtype=float)
    losses = np.array([row["val_loss"] for row in rows])
    best = int(losses.argmin())
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.plot(params, losses, "o-", label="same compute each")
    for row in rows:
        ratio = row["tokens_per_parameter"]
        ax.annotate(f"{row['name']}\n{ratio:.1f} tok/param" if ratio < 10 else f"{row['name']}\n{ratio:.0f} tok/param",
                    (row["parameters"], row["val_loss"]), textcoords="offset points", xytext=(0, 8), ha="center",
                    fontsize=8)
    if valley is not None:
        x = np.log(params)
        grid = np.linspace(x.min(), x.max(), 60)
        ax.plot(np.exp(grid), np.polyval(np.polyfit(x, losses, 2), grid), ":", color="gray", label="parabola fit")
        ax.axvline(valley[0], color="gray", linewidth=0.8, linestyle="--",
                   label=f"bottom of the fit: {valley[0]:,.0f} parameters")
    ax.plot([params[best]], [losses[best]], "r*", markersize=14, label=f"lowest: {rows[best]['name']}")
    if chosen is not None:
        for row in rows:
            if row["name"] == chosen:
                ax.plot([row["parameters"]], [row["val_loss"]], "o", markersize=13, markerfacecolor="none",
                        markeredgecolor="tab:green", label=f"the profile's model: {chosen}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_ylim(losses.min() - 0.1, losses.max() + 0.25)
    ax.set_title(f"IsoFLOP profile: {flops:.2g} FLOPs each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
