"""Run the whole course headless: ``python -m utils.course`` (what ``make course`` calls).

Executes every notebook in ``notebooks/`` in order with a fresh kernel, writes
the executed copies to ``build/notebooks/``, times each one and finishes with
the report card ``build/report.md`` and the model card
``build/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from utils import model_card, report
from utils.config import PROFILE_NAMES, REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebook(path: Path, out_dir: Path, timeout: int) -> float:
    """Execute one notebook in its own folder (as JupyterLab would) and save the result."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out_dir / path.name)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, help="overrides COURSE_PROFILE")
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 02")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["COURSE_PROFILE"] = args.profile  # the kernels inherit it

    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(args.only))]
    out_dir = REPO_ROOT / "build" / "notebooks"
    for nb in notebooks:
        print(f"running {nb.name} ...", flush=True)
        try:
            seconds = run_notebook(nb, out_dir, args.timeout)
        except Exception as error:  # report which notebook failed and where its output is
            print(f"FAILED {nb.name}: {type(error).__name__}: {str(error)[-2000:]}", file=sys.stderr)
            print(f"The partly executed notebook is in {out_dir / nb.name}", file=sys.stderr)
            return 1
        report.record_timing(nb.stem, seconds)
        print(f"  done in {seconds:.1f} s", flush=True)
    card = report.render()
    model_card_path = model_card.write_model_card()
    print(f"\nExecuted notebooks: {out_dir}\nReport card:        {card}\nModel card:         {model_card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
