"""The pictures of notebook 07, drawn here so that the notebook shows the idea, not matplotlib plumbing.

- ``recipe_figure``: InstructGPT's three steps (SFT, a reward model, PPO against it with a
  KL penalty) above DPO's two (SFT, then one loss on the same comparisons).
- ``beta_figure``: the DPO loss and the weight of a pair's gradient against the pair's
  log-ratio difference, for a few values of beta.
- ``training_figure``: a DPO run from ``DPOLoss.history``: the loss, and the implicit
  rewards of the chosen and the rejected replies step by step.

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
