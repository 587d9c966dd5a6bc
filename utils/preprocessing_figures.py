"""The pictures of notebook 02 (preprocessing and tokenization), drawn here so that the notebook shows the idea.

- ``cleaning_pipeline``: the cleaning steps in order, what each changed or dropped, conversations left.
- ``lowercasing_bytes_per_token``: what lowercasing buys a BPE tokenizer, measured.
- ``minhash_bands``: the chance that LSH compares two conversations, against their similarity.
- ``word_frequencies``: the long tail of a word vocabulary (rank against count).
- ``tokenizers_compared``: bytes per token and vocabulary use of several tokenizers.

(Byte-pair merges are drawn as an SVG by ``notebooks/figures/bpe_merges.py``.)
Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

EDIT, FILTER, DEDUP = "#bfdbfe", "#fecaca", "#fde68a"


def cleaning_pipeline(table, conversations_in: int):
    """One box per step of ``utils.cleaning.clean_conversations``, left to right, then top to bottom.

    ``table``: ``CleaningReport.table()`` (columns step, kind, messages_changed,
    conversations_dropped). Under each box: what the step did; the running count of
    conversations left after it.
    """
    rows = list(table.itertuples(index=False))
    per_line = 5
    n_lines = -(-len(rows) // per_line)
    fig, ax = plt.subplots(figsize=(12, 1.9 * n_lines + 0.6))
    ax.set_xlim(0, per_line * 2.4)
    ax.set_ylim(-1.9 * n_lines + 0.4, 0.9)
    ax.axis("off")
    left = conversations_in
    colours = {"edit": EDIT, "filter": FILTER, "dedup": DEDUP}
    for i, row in enumerate(rows):
        x, y = (i % per_line) * 2.4 + 0.1, -(i // per_line) * 1.9
        ax.add_patch(plt.Rectangle((x, y - 0.45), 1.9, 0.9, facecolor=colours.get(row.kind, "white"),
                                   edgecolor="black", linewidth=0.8))
        ax.text(x + 0.95, y + 0.12, row.step.replace("_", " "), ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + 0.95, y - 0.2, row.kind, ha="center", va="center", fontsize=8, color="dimgray")
        left -= int(row.conversations_dropped)
        did = (f"{int(row.messages_changed):,} messages changed" if row.kind == "edit"
               else f"{int(row.conversations_dropped):,} conversations dropped")
        ax.text(x + 0.95, y - 0.65, did, ha="center", va="top", fontsize=8.5,
                color="black" if (row.messages_changed or row.conversations_dropped) else "gray")
        ax.text(x + 0.95, y - 0.95, f"{left:,} left", ha="center", va="top", fontsize=8, color="dimgray")
        if i % per_line < per_line - 1 and i < len(rows) - 1:
            ax.annotate("", xy=(x + 2.4, y), xytext=(x + 1.9, y), arrowprops={"arrowstyle": "->"})
    ax.text(0.1, 0.75, f"{conversations_in:,} conversations in: text edits (blue), then filters (red), then "
            "de-duplication (yellow)", fontsize=9.5)
    fig.tight_layout()
    return fig


def lowercasing_bytes_per_token(rows: dict):
    """Bars of bytes per token for tokenizers trained and tested as typed and lowercased.

    ``rows``: ``{label: bytes per token}``, e.g. {"as typed": 2.2, "lowercased": 2.3}.
    """
    fig, ax = plt.subplots(figsize=(6, 3))
    labels, values = list(rows), list(rows.values())
    bars = ax.barh(labels, values, color=["tab:blue", "tab:gray"][: len(rows)] + ["tab:blue"] * (len(rows) - 2))
    ax.bar_label(bars, labels=[f" {v:.3f}" for v in values])
    ax.set_xlim(0, max(values) * 1.25)
    ax.invert_yaxis()
    ax.set_xlabel("UTF-8 bytes per BPE token on held-out chat (higher = shorter sequences)")
    change = values[1] / values[0] - 1 if len(values) > 1 else 0.0
    ax.set_title(f"same BPE, same vocabulary: lowercasing changes bytes per token by {change:+.1%}", fontsize=10)
    fig.tight_layout()
    return fig


def minhash_bands(bands: int, rows: int, threshold: float, similarities=()):
    """The S-curve of LSH: P(two sets become candidates) = 1 - (1 - s^rows)^bands against Jaccard s.

    ``similarities``: estimated Jaccard of pairs that were found, drawn as ticks on the curve.
    """
    s = np.linspace(0, 1, 201)
    p = 1 - (1 - s**rows) ** bands
    fig, ax = plt.subplots(figsize=(6.5, 3.3))
    ax.plot(s, p, color="tab:blue", label=f"{bands} bands of {rows} rows ({bands * rows} hashes)")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    for value in similarities:
        ax.plot([value], [1 - (1 - value**rows) ** bands], "k|", markersize=14)
    if len(similarities):
        ax.plot([], [], "k|", markersize=10, label="pairs found here")
    ax.set_xlabel("Jaccard similarity of two conversations' shingle sets")
    ax.set_ylabel("P(compared at all)")
    ax.set_title("MinHash LSH: only pairs that agree on a whole band are compared", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def word_frequencies(counts):
    """Rank against count of a word vocabulary (log-log), with the words seen once marked."""
    values = np.sort(np.fromiter(counts.values(), dtype=np.int64))[::-1]
    ranks = np.arange(1, len(values) + 1)
    once = int((values == 1).sum())
    fig, ax = plt.subplots(figsize=(6.5, 3.3))
    ax.loglog(ranks, values, color="tab:blue")
    ax.axvspan(len(values) - once + 1, len(values), color="tab:red", alpha=0.15,
               label=f"seen once: {once:,} of {len(values):,} words ({once / len(values):.0%})")
    ax.set_xlabel("word rank (log)")
    ax.set_ylabel("times seen (log)")
    ax.set_title("a word vocabulary is long-tailed: most distinct words are rare", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tokenizers_compared(comparison):
    """Two panels: bytes per token and the share of the vocabulary used, one bar per tokenizer.

    ``comparison``: a DataFrame indexed by tokenizer with "vocabulary", "bytes per token" and "share used".
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [f"{name}\n({size:,})" for name, size in comparison["vocabulary"].items()]
    colours = ["tab:blue", "tab:gray", "tab:green", "tab:orange"][: len(names)]
    left.bar(names, comparison["bytes per token"], color=colours)
    left.set_title("bytes per token (higher = shorter sequences)")
    left.bar_label(left.containers[0], fmt="%.2f")
    right.bar(names, 100 * comparison["share used"], color=colours)
    right.set_title("% of the vocabulary used")
    right.bar_label(right.containers[0], fmt="%.0f%%")
    fig.suptitle("tokenizers on held-out chat messages")
    fig.tight_layout()
    return fig
