"""The report card: each stage records its key figures; ``make course`` gathers them.

A notebook calls ``report.record("02_preprocessing", {"vocabulary": 4096, ...})``.
The figures land in ``build/report/<stage>.json`` (git-ignored) and
``render()`` turns every stage's file into ``build/report.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from utils.config import REPO_ROOT, profile_name

REPORT_DIR = REPO_ROOT / "build" / "report"
TIMINGS_FILE = "timings.json"


def _write_json_atomically(path: Path, payload: dict) -> None:
    """Write to a temp file beside ``path``, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


def record(stage: str, figures: dict, report_dir: Path = REPORT_DIR) -> Path:
    """Save one stage's figures (numbers or short strings), replacing earlier ones."""
    path = Path(report_dir) / f"{stage}.json"
    _write_json_atomically(path, {"stage": stage, "profile": profile_name(), "figures": figures})
    return path


def load_stages(report_dir: Path = REPORT_DIR) -> list[dict]:
    """Every recorded stage, in stage order (the file names sort as the notebooks do)."""
    report_dir = Path(report_dir)
    if not report_dir.exists():
        return []
    files = sorted(p for p in report_dir.glob("*.json") if p.name != TIMINGS_FILE)
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def record_timing(notebook: str, seconds: float, report_dir: Path = REPORT_DIR) -> None:
    path = Path(report_dir) / TIMINGS_FILE
    timings = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    timings[notebook] = round(seconds, 1)
    _write_json_atomically(path, timings)


def format_value(value) -> str:
    """A figure as a reader wants it: 1,334,016 / 4.839 / yes; strings unchanged."""
    if isinstance(value, bool):  # before int: True is an int in Python
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"  # 10,415 rather than 1.041e+04
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(report_dir: Path = REPORT_DIR, out: Path | None = None) -> Path:
    """Write ``build/report.md`` from every stage's figures and the notebook timings."""
    report_dir = Path(report_dir)
    out = Path(out) if out else report_dir.parent / "report.md"
    lines = ["# Report card", ""]
    timings_path = report_dir / TIMINGS_FILE
    if timings_path.exists():
        timings = json.loads(timings_path.read_text(encoding="utf-8"))
        lines += ["## Notebook run times", "", "| notebook | seconds |", "|---|---:|"]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in timings.items()]
        lines += [f"| **total** | **{sum(timings.values()):.1f}** |", ""]
    for stage in load_stages(report_dir):
        lines += [f"## {stage['stage']} (profile `{stage['profile']}`)", "", "| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {format_value(v)} |" for k, v in stage["figures"].items()]
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
