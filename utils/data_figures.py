"""The pictures of notebook 01 (data collection), so that the notebook shows the idea, not matplotlib plumbing.

- ``sources_diagram``: three kinds of source, one schema.
- ``record_to_turns``: one chitchat record's messages, by sender, merged into user / assistant turns.
- ``turns_per_conversation``: how many turns the conversations have (and how many have one).
- ``words_per_turn``: how long the turns are.
- ``turns_per_role``: user against assistant turns, and why they differ.
- ``split_diagram``: whole conversations go to one split each; a split by turn would leak.

Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

USER, ASSISTANT, SYSTEM = "#93c5fd", "#fdba74", "#d1d5db"
SPLIT_COLOURS = {"train": "#60a5fa", "validation": "#fbbf24", "test": "#34d399"}


def _box(ax, x, y, w, h, text, colour, fontsize=9, **text_style):
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", linewidth=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, **text_style)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _arrow(ax, start, end):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "linewidth": 1.0})


def sources_diagram():
    """Three kinds of source (a package, a hub dataset, your files) flowing into one schema."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 4)
    ax.axis("off")
    sources = [
        ("chitchat-dataset (PyPI, MIT)\nmessages grouped by sender id", "#e0e7ff"),
        ("OpenAssistant oasst1 (hub, Apache-2.0)\na tree of messages: parent_id, rank", "#fce7f3"),
        ("your files: .jsonl .json .csv .txt\n'User:' / 'Assistant:' lines", "#ecfccb"),
    ]
    for i, (text, colour) in enumerate(sources):
        y = 3.0 - 1.25 * i
        _box(ax, 0.1, y, 3.9, 0.9, text, colour, fontsize=8.5)
        _arrow(ax, (4.0, y + 0.45), (6.0, 2.0))
    ax.text(5.0, 3.55, "a loader each:\nroles, turns, id, licence", ha="center", fontsize=8.5, color="dimgray")
    schema = ('{"id": str, "source": str, "license": str,\n'
              ' "messages": [{"role": "user", "content": ...},\n'
              '              {"role": "assistant", "content": ...}, ...]}')
    _box(ax, 6.0, 1.2, 4.9, 1.6, schema, "white", fontsize=8.5, family="monospace")
    ax.text(8.45, 3.0, "one schema, checked by data.validate_conversation", ha="center", fontsize=9, weight="bold")
    ax.text(8.45, 0.8, "source and licence travel with every conversation", ha="center", fontsize=8.5,
            color="dimgray")
    fig.tight_layout()
    return fig


def record_to_turns(messages, first_sender, max_lines: int = 8, width: int = 38):
    """Left: a chat's lines as published, coloured by sender; right: the turns they become.

    ``messages``: the record's lines in order (dicts with "sender" and "text"); consecutive
    lines of one sender merge into one turn; the first sender is the user.
    """
    lines = [m for m in messages if m["text"].strip()][:max_lines]
    turns = []  # (role, [line indices])
    for i, m in enumerate(lines):
        role = "user" if m["sender"] == first_sender else "assistant"
        if turns and turns[-1][0] == role:
            turns[-1][1].append(i)
        else:
            turns.append((role, [i]))
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(lines) + 1.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.2, len(lines) + 0.9)
    ax.axis("off")

    def short(text):
        return _clip(text, width)

    top = len(lines)
    for i, m in enumerate(lines):
        colour = USER if m["sender"] == first_sender else ASSISTANT
        _box(ax, 0.1, top - i - 0.85, 4.6, 0.75, f"{m['sender'][:6]}…: {short(m['text'])}", colour, fontsize=8)
    for role, members in turns:
        y_top, y_bottom = top - members[0] - 0.1, top - members[-1] - 0.85
        _box(ax, 6.3, y_bottom, 4.6, y_top - y_bottom, f"{role}: " + " ⏎ ".join(_clip(lines[j]["text"], 22) for j in members),
             USER if role == "user" else ASSISTANT, fontsize=8)
        _arrow(ax, (4.7, (y_top + y_bottom) / 2), (6.3, (y_top + y_bottom) / 2))
    ax.text(2.4, top + 0.35, "published: lines by anonymous sender ids", ha="center", fontsize=9, weight="bold")
    ax.text(8.6, top + 0.35, "our schema: one turn per run of one sender", ha="center", fontsize=9, weight="bold")
    fig.tight_layout()
    return fig


def turns_per_conversation(turn_counts):
    """Histogram of turns per conversation (log count axis), the single-turn bar in red."""
    counts = np.asarray(turn_counts)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.arange(1, min(counts.max(), 80) + 2) - 0.5
    n, _, patches = ax.hist(np.minimum(counts, bins[-1] - 0.5), bins=bins, color="tab:blue")
    patches[0].set_color("tab:red")
    single = int((counts == 1).sum())
    ax.set_yscale("log")
    ax.set_xlabel(f"turns (the last bar: {int(bins[-1] - 0.5)} or more)")
    ax.set_ylabel("conversations (log)")
    ax.set_title(f"turns per conversation: {single:,} of {len(counts):,} have a single turn (red)")
    fig.tight_layout()
    return fig


def words_per_turn(words, cap_quantile: float = 0.99):
    """Histogram of words per turn, capped at a high quantile, with the median marked."""
    words = np.asarray(words)
    cap = int(np.quantile(words, cap_quantile))
    median = float(np.median(words))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(np.minimum(words, cap), bins=40, color="tab:orange")
    ax.axvline(median, color="black", linestyle="--", label=f"median: {median:g} words")
    ax.set_xlabel(f"words per turn (capped at the {cap_quantile:.0%} quantile, {cap})")
    ax.set_ylabel("turns")
    ax.set_title(f"{len(words):,} turns: most are a short line")
    ax.legend()
    fig.tight_layout()
    return fig


def turns_per_role(role_counts: dict, odd_conversations: int):
    """Bars of turns per role, annotated with the gap and the conversations with an odd number of turns."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    roles = list(role_counts)
    values = [role_counts[r] for r in roles]
    colours = [{"user": USER, "assistant": ASSISTANT}.get(r, SYSTEM) for r in roles]
    bars = ax.bar(roles, values, color=colours, edgecolor="black")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values])
    gap = role_counts.get("user", 0) - role_counts.get("assistant", 0)
    ax.set_title(f"user - assistant = {gap:,} turns = conversations with an odd number of turns "
                 f"({odd_conversations:,})", fontsize=9)
    ax.set_ylabel("turns")
    ax.set_ylim(0, max(values) * 1.15)
    fig.tight_layout()
    return fig


def split_diagram(splits: dict, per_split: int = 8, max_turns: int = 20):
    """Top: the first ``per_split`` conversations of each split as bars of turns, one colour per split.

    Bottom: the same turns dealt out one by one, at random in the same proportions (a split by
    turn): one conversation ends up in several splits, the leak a split by conversation prevents.
    """
    from matplotlib.patches import Patch

    names = list(splits)
    totals = {name: len(rows) for name, rows in splits.items()}
    shares = np.array([totals[n] for n in names], dtype=float) / sum(totals.values())
    shown = [(name, c) for name in names for c in list(splits[name])[:per_split]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 4.6), sharex=True)
    rng = np.random.default_rng(0)
    for x, (name, conversation) in enumerate(shown):
        n_turns = min(len(conversation["messages"]), max_turns)
        top.bar(x, n_turns, color=SPLIT_COLOURS.get(name, "gray"), edgecolor="black", linewidth=0.5)
        for t, split_index in enumerate(rng.choice(len(names), size=n_turns, p=shares)):
            bottom.bar(x, 1, bottom=t, color=SPLIT_COLOURS.get(names[split_index], "gray"), edgecolor="white",
                       linewidth=0.3)
    top.legend(handles=[Patch(color=SPLIT_COLOURS.get(n, "gray"), label=f"{n}: {totals[n]:,} conversations")
                        for n in names], fontsize=8, loc="upper right")
    top.set_title("split by conversation (what the course does): every turn of a chat lands in the same split")
    bottom.set_title("split by turn (what not to do): one chat's turns land in several splits, test text leaks "
                     "into training")
    for ax in (top, bottom):
        ax.set_ylabel("turns")
    bottom.set_xlabel(f"the first {per_split} conversations of each split (turns capped at {max_turns})")
    fig.tight_layout()
    return fig
