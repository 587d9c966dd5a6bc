"""What ``make course`` remembers between runs, so that a stage with nothing changed is not run again.

A stage (one notebook) is reused when all of these are as they were at its last run:

- its **code and data**: the notebook, every ``utils/*.py``, the data files git keeps under
  ``data/`` (fixtures, identity facts, hand-written preferences, ...), ``requirements*.txt``
  and ``pyproject.toml``, the Python version and the installed packages' versions. Not
  ``tools/``: the course's machinery (this runner, README times, Colab links, the chat
  command) is never imported by a notebook, so editing it reruns nothing;
- its **profile**;
- its **inputs**: the code of every earlier stage (a stage's fingerprint includes the
  previous one's), and the files the earlier stages left in ``data/processed/<profile>``
  and ``checkpoints/<profile>``: each stage's outputs are recorded (size and modification
  time of every file it wrote) and must still be on disk untouched. Re-running 04 in
  JupyterLab rewrites its checkpoint, so 04 and every later stage run again; 01-03 do not.

An earlier stage that runs again (it changed) makes every later stage run again too:
its outputs may differ. ``data/raw`` and ``data/nltk_data`` are caches of installed
packages' data, covered by the package versions; ``data/processed`` is the stages' own output.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from utils.io import write_json_atomically

STATE_FILE = "stages.json"
Signature = dict[str, list[int]]  # relative path -> [size, mtime_ns]


def _hash_files(digest, root: Path, files) -> None:
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())


GENERATED_DATA = ("raw", "processed", "nltk_data")  # under data/: downloads, caches and the stages' outputs


def data_files(root: Path) -> list[Path]:
    """The files under ``data/`` that belong to the course, not to a run: what git keeps there.

    In a git checkout: the committed files and new ones git does not ignore (``git ls-files
    --cached --others --exclude-standard``), so a data file being written counts before its
    commit. Without git (a copy, an unpacked archive): every file under ``data/`` except the
    generated folders (``GENERATED_DATA``, git-ignored in the course).
    """
    root = Path(root)
    folder = root / "data"
    if not folder.is_dir():
        return []
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        if Path(top).resolve() == root.resolve():
            listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                     "--exclude-standard", "--", "data"], capture_output=True, text=True,
                                    check=True).stdout
            return sorted(p for p in (root / name for name in listed.split("\0") if name) if p.is_file())
    except (OSError, subprocess.CalledProcessError):
        pass  # no git, or not a repository: walk the folder
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).parts[0] not in GENERATED_DATA)


def environment_fingerprint(root: Path, profile: str) -> str:
    """What every stage can depend on besides its notebook: utils, data, requirements, packages, profile.

    ``tools/`` is left out on purpose: no notebook imports it (``tests/test_layout.py``).
    """
    root = Path(root)
    digest = hashlib.sha256()
    digest.update(f"profile={profile};python={platform.python_version()}".encode())
    _hash_files(digest, root, (root / "utils").rglob("*.py"))
    _hash_files(digest, root, data_files(root))
    _hash_files(digest, root, [p for p in [*root.glob("requirements*.txt"), root / "pyproject.toml"] if p.exists()])
    versions = sorted(f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions())
    digest.update("\n".join(versions).encode())
    return digest.hexdigest()


def stage_fingerprint(previous: str, notebook: Path) -> str:
    """One stage's fingerprint: the previous stage's (or the environment's) and this notebook's bytes."""
    return hashlib.sha256(previous.encode() + notebook.read_bytes()).hexdigest()


def output_folders(root: Path, profile: str) -> list[Path]:
    """Where stages leave what later stages read: this profile's data and checkpoints."""
    return [root / "data" / "processed" / profile, root / "checkpoints" / profile]


def snapshot(root: Path, folders: list[Path]) -> Signature:
    """``{relative path: [size, mtime_ns]}`` of every file under ``folders``: cheap, and any rewrite shows."""
    files = {}
    for folder in folders:
        for path in folder.rglob("*") if folder.exists() else []:
            if path.is_file():
                stat = path.stat()
                files[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return files


def written_between(before: Signature, after: Signature) -> Signature:
    """The files a stage created or rewrote."""
    return {path: sig for path, sig in after.items() if before.get(path) != sig}


@dataclass
class StageRecord:
    fingerprint: str
    outputs: Signature = field(default_factory=dict)  # what the stage wrote, as it left it
    seconds: float | None = None
    finished: str = ""  # when the run that executed it finished (UTC, ISO 8601)


@dataclass
class CourseState:
    """Every stage's record of one profile, saved as ``build/<profile>/stages.json``."""

    stages: dict[str, StageRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "CourseState":
        path = Path(folder) / STATE_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls({name: StageRecord(**record) for name, record in raw.get("stages", {}).items()})
        except (ValueError, TypeError):  # an older or damaged file: run everything once more
            return cls()

    def save(self, folder: Path) -> Path:
        return write_json_atomically(Path(folder) / STATE_FILE,
                                     {"stages": {name: vars(record) for name, record in self.stages.items()}})

    def unchanged_outputs(self, name: str, later: list[str], now: Signature) -> bool:
        """Are the files stage ``name`` left still as it left them (unless a later stage rewrote them since)?"""
        rewritten_later = {path for stage in later if stage in self.stages for path in self.stages[stage].outputs}
        outputs = self.stages[name].outputs
        return all(now.get(path) == sig for path, sig in outputs.items() if path not in rewritten_later)
