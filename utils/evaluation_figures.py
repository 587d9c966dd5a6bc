"""The pictures of notebook 05 (evaluation), drawn here so that the notebook shows the idea.

- ``sliding_windows``: which tokens each window reads and which of its predictions are scored.
- ``sampling_distributions``: one next-token distribution under several temperatures, with top-k and top-p cuts.
- ``paired_difference``: the bootstrap distribution of a difference measured on the same documents.
- ``baselines``: perplexity of the counting baselines and the GPT (log scale).

Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

READ, SCORED = "#dbeafe", "#2563eb"


def sliding_windows(spans, n_tokens: int):
    """One row per window: the tokens it reads (light) and the targets it scores (dark).

    ``spans``: ``(begin, end, n_new)`` per window, as 05's ``sliding_windows`` returns them: the
    window reads ids[begin:end] and scores its last n_new targets, ids[end - n_new + 1 .. end].
    """
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(spans) + 1.3))
    for row, (begin, end, n_new) in enumerate(spans):
        y = len(spans) - 1 - row
        ax.barh(y, end - begin, left=begin - 0.5, height=0.6, color=READ, edgecolor="black", linewidth=0.5)
        ax.barh(y, n_new, left=end - n_new + 0.5, height=0.25, color=SCORED)
        ax.text(n_tokens + 0.2, y, f"window {row + 1}: reads {begin}..{end - 1}, scores {end - n_new + 1}..{end}",
                va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-1, n_tokens + 9)
    ax.set_xticks(range(0, n_tokens, 2))
    ax.set_xlabel("token position (light: read as context; dark: targets scored, each exactly once)")
    ax.set_title(f"sliding window over {n_tokens} tokens")
    fig.tight_layout()
    return fig


def sampling_distributions(probabilities, temperatures=(0.7, 1.0, 1.5), top_k: int = 20, top_p: float = 0.9,
                           show: int = 60, labels=None):
    """Left: the most likely next tokens at several temperatures. Right: the cumulative probability
    at temperature 1 with the top-k and top-p cuts.

    ``probabilities``: the model's next-token probabilities at temperature 1, shape (V,).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(p)[::-1]
    logits = np.log(np.clip(p[order], 1e-30, None))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6))
    ranks = np.arange(1, show + 1)
    for temperature in temperatures:
        scaled = np.exp((logits - logits.max()) / temperature)
        scaled /= scaled.sum()
        left.plot(ranks, scaled[:show], marker=".", label=f"temperature {temperature:g}")
    left.set_xlabel("rank of the token (1 = most likely)")
    left.set_ylabel("probability")
    left.set_title("temperature reshapes one distribution: < 1 sharper, > 1 flatter", fontsize=10)
    left.legend(fontsize=8)
    if labels is not None:
        top = ", ".join(f"{labels[t]!r} {p[t]:.2f}" for t in order[:3])
        left.text(0.98, 0.45, f"most likely at temperature 1:\n{top}", transform=left.transAxes, ha="right",
                  fontsize=8, bbox=dict(facecolor="white", edgecolor="lightgray"))
    cumulative = np.cumsum(p[order])
    nucleus = int(np.searchsorted(cumulative, top_p) + 1)
    right.plot(np.arange(1, len(p) + 1), cumulative, color="black")
    right.axvline(top_k, color="tab:orange", linestyle="--", label=f"top-k {top_k}: keeps {top_k}")
    right.axhline(top_p, color="tab:green", linestyle=":")
    right.axvline(nucleus, color="tab:green", linestyle="--", label=f"top-p {top_p:g}: keeps {nucleus}")
    right.set_xscale("log")
    right.set_xlabel("tokens kept, most likely first (log)")
    right.set_ylabel("cumulative probability")
    right.set_title("top-k keeps a fixed count; top-p as many as reach p", fontsize=10)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def paired_bootstrap(differences, weights, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """sum(differences) / sum(weights) over ``n_resamples`` resamples of the items (the same draws
    as ``utils.evaluation.bootstrap_interval`` with the same seed)."""
    differences, weights = np.asarray(differences, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, differences.size, size=(n_resamples, differences.size))
    return differences[picks].sum(axis=1) / weights[picks].sum(axis=1)


def paired_difference(resampled, observed: float, interval, label: str = "difference"):
    """Histogram of a bootstrapped difference, with 0 (no difference) and the 95% interval marked."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(resampled, bins=50, color="tab:blue", alpha=0.7)
    ax.axvline(0, color="black", linewidth=1.2, label="0: no difference")
    ax.axvline(observed, color="tab:red", label=f"measured: {observed:+.3f}")
    ax.axvspan(*interval, color="tab:red", alpha=0.12, label=f"95% interval: {interval[0]:+.3f} .. {interval[1]:+.3f}")
    ax.set_xlabel(label)
    ax.set_ylabel("resamples")
    ax.set_title("the same documents for both models: bootstrap the difference itself", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def baselines(perplexities: dict, highlight: str, title: str):
    """Horizontal bars of perplexity (log scale); ``highlight`` in blue, the baselines in grey."""
    fig, ax = plt.subplots(figsize=(7, 3))
    names, values = list(perplexities), list(perplexities.values())
    ax.barh(names, values, color=["tab:blue" if n == highlight else "#bbbbbb" for n in names])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("validation perplexity (log scale, lower is better)")
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:,.0f}", va="center")
    ax.set_title(title)
    fig.tight_layout()
    return fig
