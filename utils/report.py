"""The report card: each stage records its key figures; ``make course`` gathers them.

A notebook calls ``report.record("02_preprocessing", {"vocabulary": 4096, ...})``.
The figures land in ``build/<profile>/report/<stage>.json`` (git-ignored): every
profile keeps its own, so a ``ci`` test run never touches a learner's ``cpu``
figures. ``render()`` turns every stage's file into ``build/<profile>/report.md``.

While ``make course`` runs, ``COURSE_BUILD_DIR`` points the notebooks at the run's
staging folder (``build/<profile>.next``); the runner swaps it in only when every
notebook has finished, so a failed or interrupted run leaves the last complete
results where they were.

Every figure the card or the model card shows goes through ``label`` and
``format_value``: one label style (words, not snake_case; acronyms kept) and one
number format (four significant digits; thousands separated).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from utils.config import REPO_ROOT, profile_name
from utils.io import write_atomically, write_json_atomically

BUILD = REPO_ROOT / "build"
BUILD_DIR_ENV = "COURSE_BUILD_DIR"  # set by `make course` for its kernels: the run's staging folder
TIMINGS_FILE = "timings.json"


def build_dir(profile: str | None = None) -> Path:
    """This profile's results folder: ``build/<profile>`` (the current profile when None).

    While ``make course`` runs a notebook, the current profile's folder is the run's
    staging folder (``COURSE_BUILD_DIR``), swapped in when the whole run succeeds.
    """
    staging = os.environ.get(BUILD_DIR_ENV)
    if profile is None and staging:
        return Path(staging)
    return BUILD / (profile or profile_name())


def default_report_dir(profile: str | None = None) -> Path:
    """``build/<profile>/report``: one JSON file of figures per stage, and the timings."""
    return build_dir(profile) / "report"


def _folder(report_dir: Path | None) -> Path:
    return Path(report_dir) if report_dir is not None else default_report_dir()


def record(stage: str, figures: dict, report_dir: Path | None = None) -> Path:
    """Save one stage's figures (numbers or short strings), replacing earlier ones of this profile."""
    folder = _folder(report_dir)
    return write_json_atomically(folder / f"{stage}.json",
                                 {"stage": stage, "profile": profile_name(), "figures": figures})


def load_stages(report_dir: Path | None = None) -> list[dict]:
    """Every recorded stage, in stage order (the file names sort as the notebooks do)."""
    folder = _folder(report_dir)
    if not folder.exists():
        return []
    files = sorted(p for p in folder.glob("*.json") if p.name != TIMINGS_FILE)
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def load_timings(report_dir: Path | None = None) -> dict[str, float]:
    """``{notebook: seconds}`` of the last run that executed each notebook."""
    folder = _folder(report_dir)
    path = folder / TIMINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def record_timing(notebook: str, seconds: float, report_dir: Path | None = None) -> None:
    folder = _folder(report_dir)
    timings = load_timings(folder)
    timings[notebook] = round(seconds, 1)
    write_json_atomically(folder / TIMINGS_FILE, dict(sorted(timings.items())))


# --------------------------------------------------------------------------- one style for every figure

# Words a label keeps in their usual spelling; everything else is lower case, spaces between words.
_WORDS = {"lora": "LoRA", "sft": "SFT", "hf": "Hugging Face", "gpt": "GPT", "gpt2": "GPT-2", "gpt-2": "GPT-2",
          "kv": "KV", "pii": "PII", "auc": "AUC", "f1": "F1", "bpe": "BPE", "ci": "CI", "nltk": "NLTK",
          "ln": "ln", "cpu": "CPU", "gpu": "GPU", "cuda": "CUDA", "ids": "ids", "id": "id"}


def label(name: str) -> str:
    """A figure's name as a reader wants it: ``"lora_assistant_perplexity"`` -> ``"LoRA assistant perplexity"``.

    Names already written as words (``"validation loss"``, ``"wall time (s)"``) keep their words.
    """
    words = re.sub(r"_+", " ", str(name)).split()
    return " ".join(_WORDS.get(word.lower(), word) for word in words)


def format_value(value) -> str:
    """A figure as a reader wants it: four significant digits, thousands separated.

    ``1,334,016`` / ``4.839`` / ``155.0`` / ``0.04683`` / ``10,415`` / ``yes``; strings unchanged.
    The same number of significant digits everywhere, so two figures side by side
    (before / after) are written alike: ``126.9`` and ``155.0``, not ``126.9`` and ``155``.
    """
    if isinstance(value, bool):  # before int: True is an int in Python
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"  # 10,415 rather than 1.041e+04
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"  # 3.10e-06: a difference that should be zero
        return f"{value:#.4g}".rstrip(".")
    return str(value)


def format_seconds(seconds: float) -> str:
    """A duration: ``48 s``, ``2 min 31 s``, ``1 h 05 min``."""
    seconds = round(float(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def figure_table(figures: dict, header=("figure", "value")) -> list[str]:
    """A two-column Markdown table of figures, labels and numbers in the one style."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    return lines + [f"| {label(k)} | {format_value(v)} |" for k, v in figures.items()]


def render(report_dir: Path | None = None, out: Path | None = None) -> Path:
    """Write ``build/<profile>/report.md`` from every stage's figures and the notebook timings."""
    report_dir = _folder(report_dir)
    out = Path(out) if out else report_dir.parent / "report.md"
    stages = load_stages(report_dir)
    profiles = sorted({s.get("profile", "?") for s in stages})
    title = f"# Report card (profile `{profiles[0]}`)" if len(profiles) == 1 else "# Report card"
    lines = [title, ""]
    timings = load_timings(report_dir)
    if timings:
        lines += ["## Notebook run times", "", "| notebook | time | seconds |", "|---|---:|---:|"]
        lines += [f"| {name} | {format_seconds(sec)} | {sec:.1f} |" for name, sec in timings.items()]
        total = sum(timings.values())
        lines += [f"| **total** | **{format_seconds(total)}** | **{total:.1f}** |", ""]
    for stage in stages:
        lines += [f"## {stage['stage']}", ""] + figure_table(stage["figures"]) + [""]
    write_atomically(out, "\n".join(lines))
    return out


if __name__ == "__main__":
    print(render())
