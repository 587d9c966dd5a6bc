"""Draw ddp.svg: data parallelism with DistributedDataParallel, as notebook 04 section 7 describes it.

Run ``python notebooks/figures/ddp.py`` to redraw it. Plain SVG, no plotting library: the file
is small, readable and the same on every run.
"""

from html import escape
from pathlib import Path

from svg_parts import arrow, canvas

OUT = Path(__file__).with_suffix(".svg")
RANKS = 4
COL_W, LEFT, TOP = 190, 30, 70
ROWS = [  # (label, fill, stroke): one box per rank and row, top to bottom
    ("batch of rank {r}: seed + {r}", "#dbeafe", "#3b82f6"),
    ("forward + backward", "#fef3c7", "#d97706"),
    ("local gradient g{r}", "#fee2e2", "#dc2626"),
]
ROW_H, BOX_H, BOX_W = 62, 38, 160


def box(x, y, text, fill, stroke, w=BOX_W, h=BOX_H, bold=False):
    weight = ' font-weight="bold"' if bold else ""
    return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="{stroke}"/>'
            f'<text x="{x + w / 2}" y="{y + h / 2 + 5}" text-anchor="middle"{weight}>{escape(text)}</text>')


def svg() -> str:
    width = LEFT * 2 + COL_W * RANKS
    all_reduce_y = TOP + 30 + ROW_H * len(ROWS)
    step_y = all_reduce_y + 80
    height = step_y + 110
    out = [
        *canvas(width, height),
        '<text x="12" y="24" font-size="16" font-weight="bold">Data parallelism (DDP): every GPU holds a copy of '
        'the model and trains on its own batches</text>',
        '<text x="12" y="44" fill="#555">after backward, the gradients are averaged across GPUs (all-reduce), so '
        'every copy takes the same step</text>',
    ]
    for r in range(RANKS):
        x = LEFT + r * COL_W
        out.append(f'<text x="{x + BOX_W / 2}" y="{TOP + 10}" text-anchor="middle" font-weight="bold">'
                   f'GPU {r} (rank {r})</text>')
        for i, (label, fill, stroke) in enumerate(ROWS):
            y = TOP + 22 + i * ROW_H
            out.append(box(x, y, label.format(r=r), fill, stroke))
            if i:
                out.append(arrow(x + BOX_W / 2, y - ROW_H + BOX_H, x + BOX_W / 2, y - 2))
        out.append(arrow(x + BOX_W / 2, TOP + 22 + (len(ROWS) - 1) * ROW_H + BOX_H, x + BOX_W / 2, all_reduce_y - 2))
        out.append(arrow(x + BOX_W / 2, all_reduce_y + BOX_H, x + BOX_W / 2, step_y - 2))
        out.append(box(x, step_y, "same AdamW step", "#dcfce7", "#16a34a"))
    out.append(box(LEFT, all_reduce_y, "all-reduce: g = (g0 + g1 + g2 + g3) / 4, the same on every GPU",
                   "#ede9fe", "#7c3aed", w=COL_W * (RANKS - 1) + BOX_W, bold=True))
    notes = [
        "effective batch = GPUs x batch x accumulation steps; during accumulation only the last micro-batch all-reduces "
        "(no_sync)",
        "rank 0 alone evaluates and writes checkpoints and metrics.json; torchrun starts one process per GPU",
    ]
    for i, note in enumerate(notes):
        out.append(f'<text x="12" y="{step_y + BOX_H + 32 + 20 * i}" fill="#555">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(svg(), encoding="utf-8")
    print(f"wrote {OUT} ({RANKS} ranks)")
