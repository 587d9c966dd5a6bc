"""Draw bpe_merges.svg: byte-pair encoding on notebook 02's toy string, one merge per row.

Run ``python notebooks/figures/bpe_merges.py`` to redraw it. The merges are computed here
with the same rule as notebook 02's hand-written loop (the most frequent neighbouring
pair, ties to the smallest pair), so the picture matches the notebook's printed merges.
Plain SVG, no plotting library: the file is small, readable and the same on every run.
"""

from collections import Counter
from html import escape
from pathlib import Path

from svg_parts import canvas

TEXT = "the cat sat on the mat; the cat ate the rat"
N_MERGES = 10
OUT = Path(__file__).with_suffix(".svg")

CHAR_W, ROW_H, BOX_H = 16, 30, 22  # pixels per character, per row, box height
LEFT, TOP, RIGHT = 250, 56, 90  # label column, title, token count column


def bpe_rows(text: str, n_merges: int):
    """[(label, tokens, new_id)]: tokens as (first char, last char + 1, id) after 0..n merges."""
    vocab = {i: bytes([i]) for i in range(256)}
    tokens = [(i, i + 1, b) for i, b in enumerate(text.encode("utf-8"))]
    rows = [("start: one token per byte", tokens, None)]
    for new_id in range(256, 256 + n_merges):
        counts = Counter((a[2], b[2]) for a, b in zip(tokens, tokens[1:]))
        pair = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))  # most frequent, then smallest pair
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merged, i = [], 0
        while i < len(tokens):
            if i + 1 < len(tokens) and (tokens[i][2], tokens[i + 1][2]) == pair:
                merged.append((tokens[i][0], tokens[i + 1][1], new_id))
                i += 2
            else:
                merged.append(tokens[i])
                i += 1
        tokens = merged
        label = f"{new_id}: {show(vocab[pair[0]])} + {show(vocab[pair[1]])} \u2192 {show(vocab[new_id])}  ({counts[pair]}\u00d7)"
        rows.append((label, tokens, new_id))
    return rows, vocab


def show(token: bytes) -> str:
    return token.decode("utf-8").replace(" ", "\u2423")  # ␣ marks a space


def svg(rows, vocab) -> str:
    width = LEFT + CHAR_W * len(TEXT) + RIGHT
    height = TOP + ROW_H * len(rows) + 36
    out = [
        *canvas(width, height, arrow_colour=None),
        '<text x="12" y="24" font-size="16" font-weight="bold">Byte-pair encoding: every merge fuses the most '
        "frequent pair of neighbouring tokens</text>",
        '<text x="12" y="44" fill="#555">each row is the text after one more merge; each box is one token; '
        "orange: the token this merge created</text>",
    ]
    for r, (label, tokens, new_id) in enumerate(rows):
        y = TOP + r * ROW_H
        out.append(f'<text x="12" y="{y + 16}" font-family="DejaVu Sans Mono, monospace">{escape(label)}</text>')
        for start, end, token_id in tokens:
            x, w = LEFT + start * CHAR_W, (end - start) * CHAR_W
            fill, stroke = ("#f4a261", "#b5651d") if token_id == new_id else ("#dbe9f6", "#6b8fb3")
            out.append(f'<rect x="{x + 1}" y="{y}" width="{w - 2}" height="{BOX_H}" rx="4" '
                       f'fill="{fill}" stroke="{stroke}"/>')
            out.append(f'<text x="{x + w / 2}" y="{y + 16}" text-anchor="middle" '
                       f'font-family="DejaVu Sans Mono, monospace">{escape(show(vocab[token_id]))}</text>')
        out.append(f'<text x="{LEFT + CHAR_W * len(TEXT) + 10}" y="{y + 16}">{len(tokens)} tokens</text>')
    y = TOP + len(rows) * ROW_H + 16
    out.append(f'<text x="12" y="{y}" fill="#555">The list of merges is the tokenizer: encoding new text '
               "replays them in the order they were learned.</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    rows, vocab = bpe_rows(TEXT, N_MERGES)
    OUT.write_text(svg(rows, vocab), encoding="utf-8")
    print(f"wrote {OUT} ({len(rows) - 1} merges, {len(rows[-1][1])} tokens at the end)")
