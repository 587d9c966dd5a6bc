"""The pictures of notebook 06, drawn here so that the notebook shows the idea, not matplotlib plumbing.

- ``chat_labels_figure``: a conversation's tokens in the chat format, coloured by what they
  are (role marker, context, the assistant's reply), each with the label it is trained on:
  the token itself where it is learned, -100 where it is only read.
- ``lora_figure``: LoRA on one weight matrix: the frozen W beside the trainable B (out x r)
  and A (r x in) whose product is the change, and the token embedding whose chat-token
  rows train too (shared with the tied output layer).

Every function returns the matplotlib Figure; the notebook shows it with ``plt.show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from utils.chat import IGNORE_INDEX, encode_conversation

MARKER, CONTEXT, LEARNED = "#e5e7eb", "#bfdbfe", "#86efac"  # role tokens, read-only text, learned tokens
FROZEN, TRAINABLE = "#d1d5db", "#fdba74"


def _shown(piece: str) -> str:
    """A token's text as it can be drawn: spaces visible, newlines as a symbol."""
    return piece.replace("\n", "\u21b5").replace(" ", "\u2423") or "\u2205"


def chat_labels_figure(tokenizer, messages, per_row: int = 12):
    """Each token of ``messages`` in the chat format, coloured by its part, with its training label below.

    Green tokens are learned: the assistant's reply and the ``<|end|>`` that closes it (the
    label is the token's id). Grey role markers and blue system/user text are context:
    label -100, not scored. The labels are aligned with the tokens; the shift by one
    (position t predicts token t + 1) happens right before the loss.
    """
    input_ids, labels = encode_conversation(tokenizer, messages)
    special = set(tokenizer.all_special_ids)
    rows = (len(input_ids) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(1.05 * per_row, 1.25 * rows + 0.9))
    for i, (token, label) in enumerate(zip(input_ids, labels)):
        row, col = divmod(i, per_row)
        x, y = col, -1.25 * row
        learned = label != IGNORE_INDEX
        colour = LEARNED if learned else (MARKER if token in special else CONTEXT)
        ax.add_patch(Rectangle((x + 0.04, y), 0.92, 0.6, facecolor=colour, edgecolor="black", linewidth=0.7))
        ax.text(x + 0.5, y + 0.3, _shown(tokenizer.decode([token])), ha="center", va="center", fontsize=8)
        ax.text(x + 0.5, y - 0.22, str(label), ha="center", va="center", fontsize=7.5,
                color="black" if learned else "#6b7280", fontweight="bold" if learned else "normal")
    ax.text(-0.1, 0.3, "token", ha="right", va="center", fontsize=8)
    ax.text(-0.1, -0.22, "label", ha="right", va="center", fontsize=8)
    ax.set_xlim(-1.0, per_row + 0.1)
    ax.set_ylim(-1.25 * (rows - 1) - 0.6, 0.85)
    ax.axis("off")
    ax.legend(handles=[Patch(facecolor=MARKER, edgecolor="black", label="role marker (context, -100)"),
                       Patch(facecolor=CONTEXT, edgecolor="black", label="system / user text (context, -100)"),
                       Patch(facecolor=LEARNED, edgecolor="black", label="learned: the reply and its <|end|>")],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _matrix(ax, x, y, width, height, colour, title, note):
    ax.add_patch(Rectangle((x, y), width, height, facecolor=colour, edgecolor="black", linewidth=0.9))
    ax.text(x + width / 2, y + height + 0.15, title, ha="center", va="bottom", fontsize=10)
    ax.text(x + width / 2, y - 0.15, note, ha="center", va="top", fontsize=8)


def lora_figure(d_in: int, d_out: int, r: int, vocab_size: int | None = None, token_rows=None):
    """LoRA on one (d_out x d_in) weight, drawn to scale; with ``vocab_size``, the embedding and its trainable rows.

    Left: the frozen W and the trainable B (d_out x r, starts at zero) and A (r x d_in);
    the layer computes W x + (alpha / r) B A x, and merging adds (alpha / r) B A into W.
    Right (optional): the token embedding (vocab_size x d_in, drawn shortened), frozen
    except the rows of ``token_rows`` (``{"<|end|>": id, ...}``: the chat tokens), which
    the tied output layer shares.
    """
    unit = 4.0 / max(d_in, d_out)  # drawing units per row or column (the larger side of W is 4 units)
    w_in, h_out, w_r = d_in * unit, d_out * unit, max(r * unit, 0.12)
    top = max(h_out, 4.0)
    fig, ax = plt.subplots(figsize=(12 if vocab_size else 8.5, 5.2))
    _matrix(ax, 0, top - h_out, w_in, h_out, FROZEN, "W (frozen)", f"{d_out} x {d_in}\n= {d_out * d_in:,} numbers")
    ax.text(w_in + 0.45, top - h_out / 2, "+", ha="center", va="center", fontsize=20)
    bx = w_in + 0.9
    _matrix(ax, bx, top - h_out, w_r, h_out, TRAINABLE, "B", f"{d_out} x {r}\nstarts at 0")
    ax.text(bx + w_r + 0.3, top - w_r / 2, "\u00b7", ha="center", va="center", fontsize=24)
    a_x = bx + w_r + 0.6
    _matrix(ax, a_x, top - w_r, w_in, w_r, TRAINABLE, "A", f"{r} x {d_in}")
    lora_numbers = r * (d_in + d_out)
    ax.text(a_x + w_in / 2, top - 1.6,
            f"B A: same shape as W,\nrank {r}, from\nr (in + out) = {lora_numbers:,}\ntrainable numbers "
            f"({lora_numbers / (d_in * d_out):.1%} of W)", ha="center", va="top", fontsize=9)
    ax.text((a_x + w_in) / 2, -0.9, "output = W x + (alpha / r) B A x        merged for export: W + (alpha / r) B A",
            ha="center", va="top", fontsize=10)
    right = a_x + w_in
    if vocab_size:
        ex, width = right + 1.4, 1.3
        _matrix(ax, ex, 0, width, top, FROZEN, "token embedding\n= output layer (tied)",
                f"{vocab_size:,} x {d_in} (shortened)\nfrozen except these rows")
        for k, (name, row) in enumerate(sorted((token_rows or {}).items(), key=lambda item: item[1])):
            y = top - 0.1 - (k + 1) * 0.22
            ax.add_patch(Rectangle((ex, y), width, 0.16, facecolor=TRAINABLE, edgecolor="black", linewidth=0.5))
            ax.text(ex + width + 0.12, y + 0.08, f"{name} (row {row})", va="center", fontsize=8)
        right = ex + width + 1.9
    ax.set_xlim(-0.3, right)
    ax.set_ylim(-1.5, top + 1.0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(handles=[Patch(facecolor=FROZEN, edgecolor="black", label="frozen: no gradient, no AdamW moments"),
                       Patch(facecolor=TRAINABLE, edgecolor="black", label="trainable")],
              loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig
