"""The pictures of notebook 08, drawn here so that the notebook shows the idea, not matplotlib plumbing.

- ``score_histogram``: the classifier's scores of the hand-labelled texts, clean and toxic apart.
- ``precision_figure``: what a flag is worth (precision) against the share of toxic text in the
  data, from the classifier's measured recall and false-positive rate, with a few shares marked.
- ``filter_cost_figure``: what dropping the conversations with a toxic message would remove.
- ``occupation_gaps_figure``: a bias probe's gap per occupation, jobs held mostly by women and by men.
- ``effects_figure``: stereotype effects (or their changes) with their 95% intervals, one row each.
- ``moderation_diagram``: the wrapper around a chat model: screen the prompt, the model (and its
  refusal probe), screen the reply, regenerate or refuse, mask personal data.
- ``rates_figure``: rates of several models side by side, each with its 95% interval.

Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from utils.safety import FEMALE_CODED, MALE_CODED, OCCUPATIONS, precision_range

CLEAN, TOXIC = "#60a5fa", "#f87171"  # the two labels, in every figure
FEMALE, MALE = "tab:orange", "tab:blue"
DATA, MODEL, CHECK, STOP = "#bfdbfe", "#86efac", "#fde68a", "#fecaca"  # diagram boxes


def score_histogram(scores, labels, threshold: float = 0.5):
    """The scores of the labelled texts, one histogram per label; the threshold as a dashed line."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(int)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(0, 1, 21)
    for value, colour, name in [(0, CLEAN, "labelled clean"), (1, TOXIC, "labelled toxic")]:
        ax.hist(scores[labels == value], bins=bins, alpha=0.6, color=colour,
                label=f"{name} ({int((labels == value).sum())})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.set(xlabel="toxicity score", ylabel="texts", title="Classifier scores on the hand-labelled set")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def precision_figure(quality: dict, marks: dict):
    """Precision against the toxic share of the data (log scale), with the range the labelled set allows.

    ``quality``: ``classifier_quality`` at one threshold (its counts give recall and the
    false-positive rate); ``marks``: label -> a toxic share to mark, e.g. the labelled set's own.
    """
    shares = np.logspace(-3, np.log10(0.9), 200)
    point, low, high = precision_range(quality, shares)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.fill_between(shares, low, high, color="#d1d5db", label="range from the 95% intervals of recall and FPR")
    ax.plot(shares, point, color="black", label="from the measured recall and FPR")
    for i, (name, share) in enumerate(marks.items()):
        value = precision_range(quality, share)[0]
        ax.axvline(share, color=f"C{i + 1}", linestyle="--", linewidth=1)
        ax.scatter([share], [value], color=f"C{i + 1}", zorder=3)
        right = share > 0.1  # marks on the right get their note on their left
        ax.annotate(f"{name}\n{share:.1%} toxic: precision {value:.2f}", (share, value), textcoords="offset points",
                    xytext=(-8 if right else 8, -30), ha="right" if right else "left", fontsize=8, color=f"C{i + 1}")
    ax.set_xscale("log")
    ax.set(xlabel="share of the texts that are toxic (log scale)", ylabel="precision: flags really toxic",
           ylim=(0, 1.02), title=f"The same classifier, data with more or less toxic text "
                                 f"(threshold {quality['threshold']})")
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    return fig


def filter_cost_figure(cost):
    """``safety.filter_cost``'s table: the share of conversations, messages and characters removed per threshold."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for column, name in [("conversations_removed_share", "conversations"), ("messages_removed_share", "messages"),
                         ("characters_removed_share", "characters")]:
        ax.plot(cost["threshold"], 100 * cost[column], marker="o", label=name)
    ax.set(xlabel="drop a conversation if any message scores >= threshold", ylabel="% of the cleaned corpus removed",
           title="What filtering toxic conversations costs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def occupation_gaps_figure(probes: dict):
    """One panel per probe (name -> ``counterfactual_probe`` table): each occupation's gap, its templates faint."""
    fig, axes = plt.subplots(1, len(probes), figsize=(4.4 * len(probes), 3.6), squeeze=False)
    for ax, (name, table) in zip(axes[0], probes.items()):
        per_job = table.groupby("occupation")["gap"]
        for jobs, colour, label in [(FEMALE_CODED, FEMALE, "held mostly by women"),
                                    (MALE_CODED, MALE, "held mostly by men")]:
            x = [OCCUPATIONS.index(job) for job in jobs]
            means = [per_job.get_group(job).mean() for job in jobs]
            for position, job in zip(x, jobs):  # the single templates, faint
                values = per_job.get_group(job)
                ax.scatter([position] * len(values), values, s=8, alpha=0.3, color=colour)
            ax.scatter(x, means, color=colour, label=label)
            ax.hlines(np.mean(means), min(x) - 0.5, max(x) + 0.5, color=colour, linestyle="--", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(OCCUPATIONS)), OCCUPATIONS, rotation=90, fontsize=7)
        ax.set(title=name, ylabel="gap (nats): male - female word")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def effects_figure(rows: dict, xlabel: str = "stereotype effect (nats): male-coded minus female-coded jobs",
                   title: str = ""):
    """A forest plot: ``rows`` maps a name to ``(effect, low, high)``; 0 (no effect) as a line."""
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.3))
    y = np.arange(len(names))
    effects = np.array([rows[n][0] for n in names])
    low = effects - np.array([rows[n][1] for n in names])
    high = np.array([rows[n][2] for n in names]) - effects
    colours = ["#b91c1c" if rows[n][1] > 0 else "#1d4ed8" if rows[n][2] < 0 else "#4b5563" for n in names]
    for i in range(len(names)):
        ax.errorbar(effects[i], y[i], xerr=[[low[i]], [high[i]]], fmt="o", color=colours[i], capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    fig.tight_layout()
    return fig


def _box(ax, x, y, text, colour, width=2.2, height=0.9):
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.05,rounding_size=0.12",
                                facecolor=colour, edgecolor="black", linewidth=0.8))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=8.5)


def _arrow(ax, start, end, text="", dy=0.1):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, linewidth=1, color="black"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + dy, text, ha="center", va="bottom", fontsize=7.5)


def moderation_diagram():
    """``safety.moderate`` as boxes: what happens to a prompt on its way to the user."""
    fig, ax = plt.subplots(figsize=(12.5, 3.8))
    mid, low = 1.6, 0.0
    _box(ax, 0.0, mid, "the user's\nprompt", DATA, width=1.4)
    _box(ax, 2.4, mid, "classifier:\nprompt score", CHECK, width=1.9)
    _box(ax, 5.4, mid, "chat model\n(aligned: its probe\nmay decline first)", MODEL, width=2.0)
    _box(ax, 8.5, mid, "classifier:\nreply score", CHECK, width=1.9)
    _box(ax, 11.1, mid, "mask PII\n-> the user", DATA, width=1.5)
    _box(ax, 2.2, low, "refuse:\n\"I can't help with that.\"", STOP, width=2.3)
    _box(ax, 8.3, low, "refuse after\nmax_attempts replies", STOP, width=2.3)
    _arrow(ax, (1.45, mid + 0.45), (2.4, mid + 0.45))
    _arrow(ax, (4.35, mid + 0.45), (5.4, mid + 0.45), "< threshold")
    _arrow(ax, (7.45, mid + 0.45), (8.5, mid + 0.45), "reply")
    _arrow(ax, (10.45, mid + 0.45), (11.1, mid + 0.45), "<")
    _arrow(ax, (3.35, mid - 0.05), (3.35, low + 0.95))
    ax.text(3.45, mid - 0.35, ">= threshold:\nthe model never sees it", fontsize=7.5, va="center")
    _arrow(ax, (9.45, mid - 0.05), (9.45, low + 0.95))
    ax.text(9.55, mid - 0.35, ">= threshold\non the last attempt", fontsize=7.5, va="center")
    ax.add_patch(FancyArrowPatch((9.2, mid + 0.95), (6.6, mid + 0.95), connectionstyle="arc3,rad=0.45",
                                 arrowstyle="-|>", mutation_scale=12, linewidth=1, color="black"))
    ax.text(7.9, mid + 1.6, ">= threshold, attempts left: sample a new reply", ha="center", fontsize=7.5)
    ax.set_xlim(-0.2, 12.8)
    ax.set_ylim(-0.3, mid + 1.9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def rates_figure(rows: dict, labels, title: str = ""):
    """Horizontal bars with 95% intervals: ``rows`` maps a figure's name to one ``Rate`` per label (model).

    A missing rate (None) leaves its bar out.
    """
    names = list(rows)
    fig, ax = plt.subplots(figsize=(10, 0.25 * len(names) * len(labels) + 1.4))
    y = np.arange(len(names))
    height = 0.8 / len(labels)
    for i, label in enumerate(labels):
        shown = [(j, rows[name][i]) for j, name in enumerate(names) if rows[name][i] is not None]
        if not shown:
            continue
        at = np.array([j for j, _ in shown]) + (i - (len(labels) - 1) / 2) * height
        values = np.array([r.value for _, r in shown])
        errors = [[r.value - r.interval[0] for _, r in shown], [r.interval[1] - r.value for _, r in shown]]
        ax.barh(at, values, height, xerr=errors, capsize=2, label=label, alpha=0.85, color=f"C{i}")
        for position, (_, r) in zip(at, shown):
            ax.text(1.07, position, f"{r.k}/{r.n}", va="center", fontsize=6.5, color=f"C{i}")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.15), xlabel="share (bars: 95% interval; counts on the right)", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
