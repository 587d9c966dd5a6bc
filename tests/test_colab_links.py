"""tools.colab_links (`make colab-links REPO=owner/name`): every Colab badge and Colab cell pointed at a fork."""

from __future__ import annotations

import shutil

import nbformat
import pytest

from tools import colab_links
from utils import colab
from utils.config import REPO_ROOT


def notebook(*cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({})"


@pytest.fixture
def course_copy(tmp_path):
    """A course in miniature: a notebook with an old cell and a badge of another notebook, a solution without cell."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "solutions").mkdir()
    (tmp_path / "utils").mkdir()
    shutil.copy(REPO_ROOT / "utils" / "colab.py", tmp_path / "utils" / "colab.py")
    old = "https://colab.research.google.com/github/someone/old/blob/main/notebooks/07_ethics.ipynb"
    nbformat.write(notebook(
        nbformat.v4.new_markdown_cell(f"# 00 · Setup\n\n{BADGE.format(old)}\n"),
        nbformat.v4.new_code_cell("# Colab only: the old cell\nimport os, sys"),
        nbformat.v4.new_markdown_cell("Open 01 too: "
                                      + BADGE.format(old.replace("07_ethics", "01_data_collection"))),
        nbformat.v4.new_code_cell("print(1)"),
    ), tmp_path / "notebooks" / "00_setup.ipynb")
    nbformat.write(notebook(nbformat.v4.new_markdown_cell("# 00 · Solutions"), nbformat.v4.new_code_cell("x = 1")),
                   tmp_path / "solutions" / "00_setup_solutions.ipynb")
    (tmp_path / "README.md").write_text(f"| 00 | {BADGE.format(old.replace('07_ethics', '00_setup'))} |\n")
    return tmp_path


def test_colab_links_points_everything_at_a_fork_and_a_second_run_changes_nothing(course_copy):
    result = colab_links.apply(course_copy, repo="alice/fork", branch="dev")
    assert len(result.changed) == 4  # two notebooks, README, utils/colab.py
    prefix = "https://colab.research.google.com/github/alice/fork/blob/dev/"
    nb = nbformat.read(course_copy / "notebooks" / "00_setup.ipynb", as_version=4)
    assert BADGE.format(prefix + "notebooks/00_setup.ipynb") in nb.cells[0].source  # the title opens itself
    assert nb.cells[1].source == colab.colab_cell("alice/fork", "dev")
    assert BADGE.format(prefix + "notebooks/01_data_collection.ipynb") in nb.cells[2].source  # others keep their path
    assert result.dangling == ["notebooks/00_setup.ipynb: notebooks/01_data_collection.ipynb"]
    solution = nbformat.read(course_copy / "solutions" / "00_setup_solutions.ipynb", as_version=4)
    assert [c.cell_type for c in solution.cells] == ["markdown", "code", "code"]  # the cell added after the title
    assert solution.cells[1].source == nb.cells[1].source  # the same cell in every notebook
    assert prefix + "notebooks/00_setup.ipynb" in (course_copy / "README.md").read_text()
    module = (course_copy / "utils" / "colab.py").read_text()
    assert 'REPO = "alice/fork"' in module and 'BRANCH = "dev"' in module

    files = {p: p.read_bytes() for p in course_copy.rglob("*") if p.is_file()}
    again = colab_links.apply(course_copy, repo="alice/fork", branch="dev")
    assert again.changed == [] and {p: p.read_bytes() for p in files} == files
    assert colab_links.apply(course_copy, repo="bob/other", check=True).changed and \
        {p: p.read_bytes() for p in files} == files  # check writes nothing


def test_colab_links_command_line(course_copy, capsys):
    assert colab_links.main(["--root", str(course_copy), "--repo", "not a repo"]) == 2
    assert "owner/name" in capsys.readouterr().err
    assert colab_links.main(["--root", str(course_copy), "--repo", "alice/fork", "--check"]) == 1
    assert "would change notebooks/00_setup.ipynb" in capsys.readouterr().out
    assert colab_links.main(["--root", str(course_copy), "--repo", "alice/fork"]) == 0
    assert colab_links.main(["--root", str(course_copy), "--repo", "alice/fork", "--check"]) == 1  # a dangling badge
    assert "does not exist: notebooks/00_setup.ipynb: notebooks/01_data_collection.ipynb" in capsys.readouterr().err
