"""Stored outputs read as the course will be read: no machine paths, no staging folders, no reprs, no frozen bars.

The committed notebooks and solutions carry the outputs of a real run, shown on GitHub as they are.
An absolute path leaks the machine that ran them (and means nothing to a reader), ``build/<profile>.next``
is ``make course``'s staging folder (the results live in ``build/<profile>``), ``Styler at 0x...`` is a
pandas object printed instead of drawn, and a tqdm bar stored at ``0%|`` looks frozen.
"""

import json
import re

import pytest

from utils.config import REPO_ROOT

FORBIDDEN = {
    "an absolute path": re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp|Users)/"),
    "make course's staging folder": re.compile(r"build/\w+\.next\b"),
    "a pandas Styler repr": re.compile(r"Styler at 0x"),
    "a tqdm bar frozen at 0%": re.compile(r"(?<!\d)0%\|"),
}
NOTEBOOKS = sorted([*(REPO_ROOT / "notebooks").glob("*.ipynb"), *(REPO_ROOT / "solutions").glob("*.ipynb")])


def output_texts(cell):
    """Every text a stored output shows: streams, plain-text and HTML results, error tracebacks."""
    for output in cell.get("outputs", []):
        if "text" in output:
            yield "".join(output["text"])
        for kind in ("text/plain", "text/html", "text/markdown"):
            if kind in output.get("data", {}):
                yield "".join(output["data"][kind])
        if "traceback" in output:
            yield "\n".join(output["traceback"])


def problems(path):
    found = []
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        for text in output_texts(cell):
            for what, pattern in FORBIDDEN.items():
                match = pattern.search(text)
                if match:
                    start = max(0, match.start() - 40)
                    found.append(f"cell {index + 1}: {what}: ...{text[start:match.end() + 40]!r}...")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_outputs_read_as_published(path):
    assert problems(path) == [], f"{path.relative_to(REPO_ROOT)}: print paths relative to the repository, " \
                                 "build/<profile> rather than its staging folder, tables as text, static progress"


def test_the_patterns_catch_what_they_name():
    samples = {
        "an absolute path": "checkpoint in /work/main/checkpoints/cpu/pretrained",
        "make course's staging folder": "PosixPath('build/cpu.next/report/00_setup.json')",
        "a pandas Styler repr": "<pandas.io.formats.style.Styler at 0x7fb273ba55d0>",
        "a tqdm bar frozen at 0%": "pretraining:   0%|          | 0/2000 [00:00<?, ?it/s]",
    }
    for what, text in samples.items():
        assert FORBIDDEN[what].search(text), what
    for fine in ("data/processed/cpu/tokens/train.bin", "share used 100%|", "build/cpu/report", "10%|###"):
        assert not any(pattern.search(fine) for pattern in FORBIDDEN.values()), fine
