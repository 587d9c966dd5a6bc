"""What the figure scripts of this folder share: an SVG canvas with its arrow head, and an arrow.

The scripts run on their own (``python notebooks/figures/ddp.py``), and Python puts the
script's folder first on its path, so ``from svg_parts import canvas`` finds this file.
"""


def canvas(width, height, arrow_colour: str | None = "#333") -> list[str]:
    """The opening ``<svg>`` tag (size, font), the arrow head that ``arrow`` draws (unless ``arrow_colour`` is
    None) and a white background: a reader in dark mode still sees black on white."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">']
    if arrow_colour is not None:
        parts.append('<defs><marker id="head" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
                     f'<path d="M0,0 L8,4 L0,8 z" fill="{arrow_colour}"/></marker></defs>')
    parts.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    return parts


def arrow(x1, y1, x2, y2, colour: str = "#333", dashed: bool = False) -> str:
    """A line from (x1, y1) to (x2, y2) ending in the canvas's arrow head."""
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}"{dash} marker-end="url(#head)"/>'
