"""Point every Colab badge and Colab cell at one repository: ``python -m tools.colab_links [--repo owner/name]``.

``make colab-links REPO=owner/name`` (a fork) runs it. It writes, from ``utils.colab``:

- in every notebook of ``notebooks/`` and ``solutions/``: the Colab cell (the code cell
  whose first line starts with ``# Colab only:``; added after the title when missing) and
  every "Open In Colab" link in a Markdown cell (the title's badge opens its own notebook);
- in ``README.md``: every "Open In Colab" link;
- ``utils/colab.py``'s ``REPO`` (and ``BRANCH``), the one place the name lives.

Without ``--repo`` it uses ``utils.colab.REPO``: the cells and badges follow the current
template. Files that are already right are not written, so a second run changes nothing.
``--check`` changes nothing and exits 1 when a file would change, or when a badge opens a
notebook that does not exist.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from utils import colab
from utils.config import REPO_ROOT

NOTEBOOK_FOLDERS = ("notebooks", "solutions")
REPO_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")  # GitHub's owner/name
# An "Open In Colab" link: https://colab.research.google.com/github/<owner>/<name>/blob/<branch>/<path>
COLAB_LINK = re.compile(
    r"https://colab\.research\.google\.com/github/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/blob/[^/\s)\"']+/([^\s)\"'#?]+)"
)


@dataclass
class Result:
    changed: list[Path] = field(default_factory=list)  # files written (or, with check, that would be)
    dangling: list[str] = field(default_factory=list)  # "file: path" for badges that open nothing


def find_notebooks(root: Path) -> list[Path]:
    return [path for folder in NOTEBOOK_FOLDERS for path in sorted((root / folder).glob("*.ipynb"))]


def rewrite_links(text: str, repo: str, branch: str, own_path: str | None = None) -> str:
    """Every Colab link in ``text`` on ``repo``/``branch``; with ``own_path``, each link opens that notebook."""
    return COLAB_LINK.sub(lambda m: colab.badge_url(own_path or m.group(1), repo, branch), text)


def linked_paths(text: str) -> list[str]:
    return [m.group(1) for m in COLAB_LINK.finditer(text)]


def _is_colab_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(colab.CELL_MARKER)


def rewrite_notebook(nb, own_path: str, repo: str, branch: str) -> None:
    """The notebook's Colab cell and Colab links on ``repo`` (in place)."""
    import nbformat

    title_done = False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "colab.research.google.com/github/" in cell.source:
            cell.source = rewrite_links(cell.source, repo, branch, None if title_done else own_path)
        if cell.cell_type == "markdown":
            title_done = True  # only the first Markdown cell (the title) carries the notebook's own badge
    source = colab.colab_cell(repo, branch)
    cells = [cell for cell in nb.cells if _is_colab_cell(cell)]
    if cells:
        for cell in cells:
            cell.source = source
    else:
        title = next((i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"), -1)
        nb.cells.insert(title + 1, nbformat.v4.new_code_cell(source))


def _set_constant(text: str, name: str, value: str) -> str:
    pattern = re.compile(rf'^{name} = "[^"]*"', re.MULTILINE)
    if not pattern.search(text):
        raise ValueError(f"utils/colab.py: no line `{name} = \"...\"` to rewrite.")
    return pattern.sub(f'{name} = "{value}"', text, count=1)


def apply(root: Path = REPO_ROOT, repo: str = colab.REPO, branch: str = colab.BRANCH, check: bool = False) -> Result:
    """Rewrite (or with ``check``, compare) every file that names the repository."""
    import nbformat

    if not REPO_PATTERN.match(repo):
        raise ValueError(f"--repo {repo!r}: give the GitHub repository as owner/name, e.g. my-name/course.")
    root = Path(root)
    result = Result()

    def update(path: Path, new: str) -> None:
        if path.read_text(encoding="utf-8") != new:
            result.changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")

    for path in find_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        rewrite_notebook(nb, path.relative_to(root).as_posix(), repo, branch)
        update(path, nbformat.writes(nb) + "\n")
        result.dangling += [f"{path.relative_to(root)}: {p}" for cell in nb.cells if cell.cell_type == "markdown"
                            for p in linked_paths(cell.source) if not (root / p).exists()]
    readme = root / "README.md"
    if readme.exists():
        text = rewrite_links(readme.read_text(encoding="utf-8"), repo, branch)
        update(readme, text)
        result.dangling += [f"README.md: {p}" for p in linked_paths(text) if not (root / p).exists()]
    module = root / "utils" / "colab.py"
    text = module.read_text(encoding="utf-8")
    update(module, _set_constant(_set_constant(text, "REPO", repo), "BRANCH", branch))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.colab_links", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=colab.REPO, help=f"GitHub owner/name (default: {colab.REPO})")
    parser.add_argument("--branch", default=colab.BRANCH, help=f"the branch the badges open (default: {colab.BRANCH})")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if something would change")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)  # tests: a copy
    args = parser.parse_args(argv)
    try:
        result = apply(args.root, args.repo, args.branch, args.check)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    verb = "would change" if args.check else "rewrote"
    for path in result.changed:
        print(f"{verb} {path.relative_to(args.root)}")
    for where in result.dangling:
        print(f"warning: a Colab badge opens a notebook that does not exist: {where}", file=sys.stderr)
    if not result.changed:
        print(f"Every Colab cell and badge already points at {args.repo} ({args.branch}).")
    return 1 if args.check and (result.changed or result.dangling) else 0


if __name__ == "__main__":
    sys.exit(main())
