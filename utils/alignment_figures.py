"""The pictures of notebook 07, drawn here so that the notebook shows the idea, not matplotlib plumbing.

- ``recipe_figure``: InstructGPT's three steps (SFT, a reward model, PPO against it with a
  KL penalty) above DPO's two (SFT, then one loss on the same comparisons).
- ``beta_figure``: the DPO loss and the weight of a pair's gradient against the pair's
  log-ratio difference, for a few values of beta.
- ``training_figure``: a DPO run from ``DPOLoss.history``: the loss, and the implicit
  rewards of the chosen and the rejected replies step by step.
- ``requests_figure``: the written requests per harm area, kind and split.
- ``decide_decline_figure``: the aligned model's two parts: a probe decides, the fine-tuned model words.
- ``probe_figure``: the probe's P(decline) for harmful, benign and everyday requests, and the threshold.
- ``tradeoff_figure``: harmful refused against benign refused: the probe's curve over thresholds,
  other recipes as points, the goal as a box.
- ``rates_figure``: rates before and after, each with its 95% interval.

Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

DATA, MODEL, LOSS = "#bfdbfe", "#86efac", "#fdba74"  # data, a model that is trained, a loss or a judge


def _box(ax, x, y, text, colour, width=2.3, height=1.0):
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.05,rounding_size=0.12",
                                facecolor=colour, edgecolor="black", linewidth=0.8))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=8.5, wrap=True)


def _arrow(ax, start, end, text=""):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, linewidth=1, color="black"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom", fontsize=7.5)


def recipe_figure():
    """InstructGPT (Ouyang et al., 2022) in the top row, DPO (Rafailov et al., 2023) in the bottom row."""
    fig, ax = plt.subplots(figsize=(12, 4.6))
    top, bottom = 2.6, 0.0
    ax.text(-0.2, top + 1.55, "InstructGPT / RLHF: three steps", fontsize=10, fontweight="bold")
    _box(ax, 0.0, top, "1. SFT\ndemonstrations ->\nchat model", MODEL)
    _box(ax, 3.2, top, "2. Reward model\nlearns to score replies\nfrom human comparisons", LOSS)
    _box(ax, 6.4, top, "3. PPO\nsample replies, score them,\nupdate the policy", MODEL)
    _box(ax, 9.6, top, "KL penalty\nstay close to\nthe SFT model", LOSS)
    _arrow(ax, (2.35, top + 0.5), (3.15, top + 0.5), "")  # the SFT model starts the reward model and the policy
    _arrow(ax, (5.55, top + 0.5), (6.35, top + 0.5), "reward")
    _arrow(ax, (9.55, top + 0.5), (8.75, top + 0.5), "")
    ax.text(0.0, top - 0.45, "two extra models in memory during PPO (the reward model and the frozen SFT "
            "reference), sampling inside the training loop, many hyperparameters", fontsize=8, color="#374151")

    ax.text(-0.2, bottom + 1.55, "DPO: the same comparisons, one loss", fontsize=10, fontweight="bold")
    _box(ax, 0.0, bottom, "1. SFT\n(the same)", MODEL)
    _box(ax, 3.2, bottom, "preference pairs\n(prompt, chosen,\nrejected)", DATA)
    _box(ax, 6.4, bottom, "2. DPO loss\n-ln sigmoid(beta x\nlog-ratio difference)", LOSS)
    _box(ax, 9.6, bottom, "reference =\nthe SFT model\n(frozen; here: LoRA off)", MODEL)
    _arrow(ax, (2.35, bottom + 0.5), (3.15, bottom + 0.5), "")
    _arrow(ax, (5.55, bottom + 0.5), (6.35, bottom + 0.5), "")
    _arrow(ax, (9.55, bottom + 0.5), (8.75, bottom + 0.5), "")
    ax.text(0.0, bottom - 0.45, "no reward model (the policy's own log-ratio is the reward), no sampling while "
            "training: a classification loss on pairs", fontsize=8, color="#374151")
    ax.set_xlim(-0.3, 12.1)
    ax.set_ylim(-0.8, top + 1.9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def beta_figure(betas=(0.05, 0.1, 0.5)):
    """Left: the loss -ln sigmoid(beta * d) of a pair against d, the chosen log-ratio minus the rejected one.
    Right: the weight sigmoid(-beta * d) that scales the pair's gradient: large while the pair is ranked
    wrong, near 0 once it is ranked right by a margin of a few / beta nats."""
    d = np.linspace(-40, 40, 401)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for beta in betas:
        left.plot(d, np.logaddexp(0, -beta * d), label=f"beta = {beta}")
        right.plot(d, 1 / (1 + np.exp(beta * d)), label=f"beta = {beta}")
    left.axhline(np.log(2), color="grey", linewidth=0.8, linestyle=":")
    left.text(-39, np.log(2) + 0.1, "ln 2: policy = reference", fontsize=8, color="grey")
    left.set(xlabel="d = chosen log-ratio - rejected log-ratio (nats)", ylabel="DPO loss of the pair")
    right.set(xlabel="d (nats)", ylabel="gradient weight sigmoid(-beta d)")
    for ax in (left, right):
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_figure(history: list[dict]):
    """The DPO run step by step: the loss (left) and the mean implicit rewards of chosen and rejected replies."""
    steps = np.arange(1, len(history) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    left.plot(steps, [h["loss"] for h in history], marker=".")
    left.axhline(np.log(2), color="grey", linewidth=0.8, linestyle=":")
    left.set(xlabel="step", ylabel="DPO loss (training batch)", title="loss (ln 2 at the start)")
    right.plot(steps, [h["chosen_reward"] for h in history], marker=".", label="chosen")
    right.plot(steps, [h["rejected_reward"] for h in history], marker=".", label="rejected")
    right.axhline(0, color="grey", linewidth=0.8)
    right.set(xlabel="step", ylabel="beta x ln(pi / pi_ref)", title="implicit rewards (below 0: likelihood fell)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def requests_figure(requests_by_split: dict):
    """Requests per harm area: harmful and benign look-alikes, for each split side by side."""
    from utils.preferences import AREAS

    splits = list(requests_by_split)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    y = np.arange(len(AREAS))
    height = 0.8 / len(splits)
    for i, split in enumerate(splits):
        requests = requests_by_split[split]
        harmful = [sum(r.area == a and r.kind == "harmful" for r in requests) for a in AREAS]
        benign = [sum(r.area == a and r.kind == "benign" for r in requests) for a in AREAS]
        offset = y + (i - (len(splits) - 1) / 2) * height
        ax.barh(offset, harmful, height, color="#f87171", edgecolor="white", label="harmful" if i == 0 else None)
        ax.barh(offset, benign, height, left=harmful, color="#60a5fa", edgecolor="white",
                label="benign look-alike" if i == 0 else None)
        for yy, total in zip(offset, np.add(harmful, benign)):
            ax.text(total + 0.3, yy, split, va="center", fontsize=7, color="grey")
    ax.set_yticks(y, AREAS, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("requests")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("every harm area: requests to decline and harmless ones that sound alike, in every split")
    fig.tight_layout()
    return fig


def decide_decline_figure():
    """The aligned model: the probe reads the prompt's last hidden state and decides; the fine-tuned model words."""
    fig, ax = plt.subplots(figsize=(12, 3.4))
    _box(ax, 0.0, 1.2, "the conversation\n(system, turns,\nthe new request)", DATA)
    _box(ax, 3.0, 1.2, "SmolLM2 made yours,\nblocks 0 .. L\n(frozen)", MODEL)
    _box(ax, 6.0, 2.2, "refusal probe:\nP(decline) from the last\nprompt token's state", LOSS)
    _box(ax, 9.3, 2.2, "yes: the reply starts\n\"I can't help with\" and\nthe model writes the rest", MODEL)
    _box(ax, 9.3, 0.2, "no: the model\nanswers as it would\nhave before", MODEL)
    _arrow(ax, (2.35, 1.7), (3.0, 1.7))
    _arrow(ax, (5.35, 1.9), (6.0, 2.6), "block L's output")
    _arrow(ax, (8.35, 2.7), (9.3, 2.7), ">= threshold")
    _arrow(ax, (8.35, 2.45), (9.3, 0.7), "< threshold")
    ax.text(3.0, -0.45, "DPO teaches the words after the prefix: what it declines, why, what it can do instead;\n"
            "and that the model never starts a refusal of a harmless request by itself", fontsize=8)
    ax.set_xlim(-0.2, 12.0)
    ax.set_ylim(-0.8, 3.5)
    ax.axis("off")
    fig.tight_layout()
    return fig


def probe_figure(probabilities: dict, threshold: float, title: str = ""):
    """Histograms of the probe's P(decline) per kind of request; the threshold as a line."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    colours = {"harmful": "#f87171", "benign": "#60a5fa", "everyday": "#a3a3a3"}
    bins = np.linspace(0, 1, 26)
    for kind, values in probabilities.items():
        ax.hist(values, bins=bins, alpha=0.6, color=colours.get(kind), label=f"{kind} ({len(values)})")
    ax.axvline(threshold, color="black", linewidth=1.2, linestyle="--")
    ax.text(threshold + 0.01, ax.get_ylim()[1] * 0.9, f"decline from {threshold:.2f}", fontsize=8)
    ax.set(xlabel="the probe's P(decline)", ylabel="requests", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tradeoff_figure(curves: dict, points: dict, goal=(0.10, 0.80)):
    """Harmful refused (up is good) against benign refused (left is good).

    ``curves``: label -> (benign rates, harmful rates) over thresholds; ``points``: label -> (benign, harmful).
    The goal (at most ``goal[0]`` benign, at least ``goal[1]`` harmful refused) is the shaded box.
    """
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.add_patch(plt.Rectangle((0, goal[1]), goal[0], 1 - goal[1], color="#bbf7d0", alpha=0.6, zorder=0))
    ax.text(0.005, goal[1] + 0.02, "goal", fontsize=8, color="#166534")
    for label, (benign, harmful) in curves.items():
        ax.plot(benign, harmful, marker=".", markersize=3, label=label)
    for label, (benign, harmful) in points.items():
        ax.scatter([benign], [harmful], s=45, zorder=3)
        ax.annotate(label, (benign, harmful), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="benign requests refused (lower is better)",
           ylabel="harmful requests refused (higher is better)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def rates_figure(rows: dict, labels=("before", "after"), title: str = ""):
    """Horizontal bars of rates with their 95% intervals: ``rows`` maps a figure's name to one Rate per label."""
    names = list(rows)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 1.2))
    y = np.arange(len(names))
    height = 0.8 / len(labels)
    for i, label in enumerate(labels):
        rates = [rows[name][i] for name in names]
        values = [r.value for r in rates]
        low = [r.value - r.interval[0] for r in rates]
        high = [r.interval[1] - r.value for r in rates]
        ax.barh(y + (i - (len(labels) - 1) / 2) * height, values, height, xerr=[low, high], capsize=2,
                label=label, alpha=0.85)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.05), xlabel="share (bars: 95% interval)", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
