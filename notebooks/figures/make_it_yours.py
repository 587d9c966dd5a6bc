"""Draw make_it_yours.svg: what "Make it yours" trains, and on what, as notebook 06 section 12.5 describes it.

Run ``python notebooks/figures/make_it_yours.py`` to redraw it. Plain SVG, no plotting library: the file
is small, readable and the same on every run.
"""

from html import escape
from pathlib import Path

from svg_parts import arrow, canvas

OUT = Path(__file__).with_suffix(".svg")
BLOCKS, ADAPTED = 30, 15  # SmolLM2's blocks; the cpu profile adapts the last 15
FROZEN = ("#e5e7eb", "#6b7280")
ADAPTER = ("#fed7aa", "#ea580c")
DATA = ("#dbeafe", "#3b82f6")
LOSS = ("#dcfce7", "#16a34a")


def box(x, y, w, h, text, colours, bold=False, size=13):
    fill, stroke = colours
    weight = ' font-weight="bold"' if bold else ""
    lines = text.split("\n")
    first = y + h / 2 + 5 - 8 * (len(lines) - 1)
    spans = "".join(f'<tspan x="{x + w / 2}" y="{first + 16 * i}">{escape(line)}</tspan>' for i, line in enumerate(lines))
    return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="{stroke}"/>'
            f'<text text-anchor="middle" font-size="{size}"{weight}>{spans}</text>')


def label(x, y, text, anchor="start", size=13, colour="#111"):
    return f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="{size}" fill="{colour}">{escape(text)}</text>'


def svg() -> str:
    width, height = 1010, 520
    out = [
        *canvas(width, height),
        label(width / 2, 28, "Make it yours: LoRA on the last blocks, two kinds of reply, two losses", "middle", 16),
    ]
    # The model: one thin bar per block, bottom (block 0) to top (block 29).
    x, bottom, bar_h, bar_w = 320, 450, 10, 170
    for block in range(BLOCKS):
        y = bottom - (block + 1) * (bar_h + 2)
        adapted = block >= BLOCKS - ADAPTED
        out.append(f'<rect x="{x}" y="{y}" width="{bar_w}" height="{bar_h}" rx="2" '
                   f'fill="{(ADAPTER if adapted else FROZEN)[0]}" stroke="{(ADAPTER if adapted else FROZEN)[1]}"/>')
    top_of_adapted = bottom - BLOCKS * (bar_h + 2)
    top_of_frozen = bottom - (BLOCKS - ADAPTED) * (bar_h + 2)
    out += [
        label(x + bar_w + 10, top_of_adapted + 150, f"blocks {BLOCKS - ADAPTED}-{BLOCKS - 1}: frozen W + trained B A"),
        label(x + bar_w + 10, top_of_adapted + 168, "(backpropagation stops below them)", size=12, colour="#555"),
        label(x + bar_w + 10, top_of_frozen + 85, f"blocks 0-{BLOCKS - ADAPTED - 1}: frozen"),
        label(x + bar_w + 10, top_of_frozen + 103, "their outputs computed once per conversation, cached", size=12,
              colour="#555"),
        box(x, bottom + 12, bar_w, 34, "the conversation's tokens", FROZEN, size=12),
        box(x, top_of_adapted - 46, bar_w, 34, "next-token distribution", FROZEN, size=12),
    ]
    # The data on the left, the losses on the right.
    out += [
        box(30, 120, 220, 64, "identity conversations\n\"What's your name?\" \"I'm Pip.\"", DATA, size=12),
        box(30, 250, 220, 64, "everyday conversations\n(and ones that invite a name)", DATA, size=12),
        box(30, 380, 220, 64, "two-turn conversations\n(only the last reply scored)", DATA, size=12),
        arrow(250, 152, x - 6, bottom + 20), arrow(250, 282, x - 6, bottom + 28), arrow(250, 412, x - 6, bottom + 36),
        box(760, 50, 230, 64, "identity replies:\ncross-entropy (must change)", LOSS, size=12),
        box(760, 130, 230, 80, "everyday replies:\ncross-entropy + weight x KL\nto the original's distribution", LOSS,
            size=12),
        arrow(x + bar_w, top_of_adapted - 36, 756, 82),
        arrow(x + bar_w, top_of_adapted - 22, 756, 170),
        box(760, 250, 230, 64, "the original's distributions:\none pass before step 1", FROZEN, size=12),
        arrow(875, 250, 875, 214, dashed=True),
        label(760, 400, "LoRA's B starts at 0: at step 0", size=12, colour="#555"),
        label(760, 416, "the adapted model is the original,", size=12, colour="#555"),
        label(760, 432, "so the original's distributions", size=12, colour="#555"),
        label(760, 448, "are one pass of it, before training.", size=12, colour="#555"),
    ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(svg(), encoding="utf-8")
    print(f"wrote {OUT}")
