"""Draw course_map.svg: the nine notebooks and what each hands to the next (notebook 00 shows it).

Run ``python notebooks/figures/course_map.py`` to redraw it. Plain SVG, no plotting library.
"""

from html import escape
from pathlib import Path

from svg_parts import arrow, canvas

OUT = Path(__file__).with_suffix(".svg")
BOX_W, BOX_H = 150, 58
STAGES = {  # name: (column, row, title, what it builds)
    "00": (0, 0, "00 setup", "a green check"),
    "01": (1, 0, "01 data", "chats, one schema"),
    "02": (2, 0, "02 preprocessing", "clean text, BPE"),
    "03": (2, 1, "03 architecture", "the GPT class"),
    "04": (3, 0, "04 training", "a pretrained GPT"),
    "05": (4, 0, "05 evaluation", "perplexity, sampling"),
    "06": (3, 1, "06 fine-tuning", "a chat model"),
    "07": (3, 2, "07 alignment", "DPO, measured"),
    "08": (4, 2, "08 ethics", "safety, model card"),
}
EDGES = [  # (from, to, what travels)
    ("00", "01", "a profile"), ("01", "02", "conversation splits"), ("02", "04", "token ids, tokenizer"),
    ("03", "04", "GPT, GPTConfig"), ("04", "05", "checkpoint"), ("04", "06", "checkpoint"),
    ("02", "06", "clean chats"), ("06", "07", "SmolLM2 made yours"), ("07", "08", "aligned model"),
]


def place(name):
    column, row, *_ = STAGES[name]
    return 30 + column * 210, 70 + row * 120


def svg() -> str:
    width, height = 30 + 5 * 210, 70 + 3 * 120 + 10
    out = [
        *canvas(width, height, arrow_colour="#555"),
        '<text x="12" y="26" font-size="16" font-weight="bold">The course: nine notebooks, each hands its result '
        'to the next</text>',
        '<text x="12" y="46" fill="#555">a missing result is rebuilt by the notebook that needs it, with a message'
        '</text>',
    ]
    for a, b, label in EDGES:
        (xa, ya), (xb, yb) = place(a), place(b)
        if ya == yb:  # same row: right edge to left edge
            x1, y1, x2, y2 = xa + BOX_W, ya + BOX_H / 2, xb, yb + BOX_H / 2
        elif xa == xb:  # same column: bottom to top
            x1, y1, x2, y2 = xa + BOX_W / 2, ya + BOX_H, xb + BOX_W / 2, yb
        else:  # diagonal: centre to centre, shortened to the boxes
            x1, y1 = xa + BOX_W * (1 if xb > xa else 0), ya + BOX_H / 2
            x2, y2 = xb + BOX_W * (0 if xb > xa else 1), yb + BOX_H / 2
        out.append(arrow(x1, y1, x2, y2, colour="#555"))
        out.append(f'<text x="{(x1 + x2) / 2 + 4}" y="{(y1 + y2) / 2 - 5}" font-size="11" fill="#7c3aed">'
                   f'{escape(label)}</text>')
    for name, (_, _, title, builds) in STAGES.items():
        x, y = place(name)
        fill = "#dbeafe" if name <= "05" else "#fef3c7"
        out.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" stroke="#333"/>')
        out.append(f'<text x="{x + BOX_W / 2}" y="{y + 24}" text-anchor="middle" font-weight="bold">{escape(title)}</text>')
        out.append(f'<text x="{x + BOX_W / 2}" y="{y + 44}" text-anchor="middle" fill="#444">{escape(builds)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(svg(), encoding="utf-8")
    print(f"wrote {OUT} ({len(STAGES)} notebooks, {len(EDGES)} hand-overs)")
