"""tools.course_state: the stage cache keys on what a notebook can depend on, and on nothing else.

A notebook can depend on ``utils/*.py``, the data files the course keeps in ``data/``, the
requirements and the installed packages, the profile (and its own bytes, in
``stage_fingerprint``). It never imports ``tools/`` (``test_layout``), so editing the
machinery (README times, the runner itself) must not rerun the nine stages.
"""

import shutil
import subprocess

import pytest

from tools.course_state import data_files, environment_fingerprint


def small_course(root):
    """A course in miniature: the library, the machinery, a committed data file, a generated one, requirements."""
    for relative, text in {"utils/config.py": "SEED = 1\n", "utils/__init__.py": "",
                           "tools/readme_times.py": "BEGIN = 'times'\n", "tools/__init__.py": "",
                           "data/identity/facts.jsonl": '{"q": "Who made you?"}\n',
                           "data/processed/ci/tokens.txt": "written by a stage\n",
                           "data/raw/download.txt": "a cache\n", "requirements.txt": "torch>=2\n",
                           ".gitignore": "/data/raw/\n/data/processed/\n"}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def edits_and_fingerprints(root):
    """(edit, whether it changed the fingerprint) for each edit, one after another."""
    results = {}
    before = environment_fingerprint(root, "ci")
    for edit, path, text in [("tools", "tools/readme_times.py", "BEGIN = 'edited'\n"),
                             ("new tools module", "tools/extra.py", "x = 1\n"),
                             ("generated data", "data/processed/ci/tokens.txt", "rewritten by a stage\n"),
                             ("raw data", "data/raw/download.txt", "another download\n"),
                             ("utils", "utils/config.py", "SEED = 2\n"),
                             ("data", "data/identity/facts.jsonl", '{"q": "What is your name?"}\n'),
                             ("requirements", "requirements.txt", "torch>=2.1\n")]:
        (root / path).write_text(text)
        after = environment_fingerprint(root, "ci")
        results[edit] = after != before
        before = after
    return results


EXPECTED = {"tools": False, "new tools module": False, "generated data": False, "raw data": False,
            "utils": True, "data": True, "requirements": True}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_editing_tools_keeps_the_fingerprint_editing_utils_or_data_changes_it(tmp_path):
    root = small_course(tmp_path / "course")
    git(root, "init", "-q")
    git(root, "add", ".")
    assert [p.relative_to(root).as_posix() for p in data_files(root)] == ["data/identity/facts.jsonl"]
    assert edits_and_fingerprints(root) == EXPECTED
    assert environment_fingerprint(root, "ci") != environment_fingerprint(root, "cpu")


def test_without_git_the_data_folder_minus_generated_files_counts(tmp_path):
    root = small_course(tmp_path / "copy")  # not a repository: an unpacked archive, a copy
    assert [p.relative_to(root).as_posix() for p in data_files(root)] == ["data/identity/facts.jsonl"]
    assert edits_and_fingerprints(root) == EXPECTED


def test_the_course_s_own_data_files_are_those_git_keeps():
    from utils.config import REPO_ROOT

    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listed = {p.relative_to(REPO_ROOT).as_posix() for p in data_files(REPO_ROOT)}
    assert "data/README.md" in listed
    assert not any(p.startswith(("data/processed/", "data/raw/", "data/nltk_data/")) for p in listed)
