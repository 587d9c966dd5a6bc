"""Run the whole course headless: ``python -m tools.course`` (what ``make course`` calls).

Executes every notebook in ``notebooks/`` (``NN_name.ipynb``, in order) with a fresh
kernel and gathers the results of the profile in ``build/<profile>/``: the executed
notebooks, the report card ``report.md`` and the model card ``MODEL_CARD.md``.

- **Each profile has its own results**: a ``ci`` run (``make test``) never touches
  ``build/cpu``, ``data/processed/cpu`` or ``checkpoints/cpu``.
- **Results are never half-replaced**: the run writes into ``build/<profile>.next``
  (a copy of the last results) and swaps it in only when every notebook has finished.
  A failed or interrupted run leaves the last complete results in place and says
  where its partial notebook is.
- **Nothing runs twice for nothing**: a stage whose notebook, ``utils`` code, data files,
  profile and inputs are unchanged since its last run is reused, and says so
  (``tools.course_state``); ``--fresh`` (``make course FRESH=1``) runs everything.
- **It never hangs and never goes quiet**: a per-cell time limit that fits the
  profile, a progress line, and Ctrl-C that stops at once (``tools.notebook_runner``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tools import course_state
from tools.notebook_runner import CellTimedOut, Interrupted, NotebookFailed, ProgressLine, run_notebook
from utils import model_card, report
from utils.config import PROFILE_NAMES, REPO_ROOT, ProfileError, profile_name
from utils.io import write_json_atomically

# Seconds one cell may run before the runner stops it, per profile: about 5x the slowest cell measured
# (ci: seconds on 2 cores; cpu: 04's pretraining cell, minutes; gpu: GPT-2 124M pretraining on a T4).
CELL_TIMEOUT_S = {"ci": 300, "cpu": 1800, "gpu": 7200}
RUN_FILE = "run.json"  # when and on what the last complete run ran (the README's time table reads it)


def find_notebooks(folder: Path) -> list[Path]:
    """``NN_name.ipynb`` files in order: adding or renumbering a notebook needs no change here."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def _shown(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _machine() -> str:
    cores = os.cpu_count() or 0
    return f"{platform.system()} {platform.machine()}, {cores} CPU cores"


def _load() -> float | None:
    """The 1-minute load average: above the core count, other work shared the machine and times ran long."""
    try:
        return round(os.getloadavg()[0], 1)
    except (AttributeError, OSError):  # Windows
        return None


class Run:
    """One ``make course``: the staging folder, the stages to run or reuse, the swap at the end."""

    def __init__(self, root: Path, notebooks_dir: Path, profile: str, fresh: bool, timeout: int,
                 only: list[str] | None):
        self.root, self.profile, self.fresh, self.timeout = Path(root), profile, fresh, timeout
        self.notebooks = find_notebooks(notebooks_dir)
        self.selected = [nb for nb in self.notebooks if not only or nb.name.startswith(tuple(only))]
        self.current = self.root / "build" / profile  # the last complete results
        self.staging = self.root / "build" / f"{profile}.next"  # this run's, swapped in at the end
        self.previous = self.root / "build" / f"{profile}.old"
        self.load_at_start = _load()

    def shown(self, path: Path) -> str:
        return _shown(path, self.root)

    def prepare(self) -> course_state.CourseState:
        """A fresh staging folder holding a copy of the last complete results, without stale stages."""
        if not self.current.exists() and self.previous.exists():  # a swap cut short: the old results come back
            os.replace(self.previous, self.current)
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.current.exists():
            shutil.copytree(self.current, self.staging, ignore=shutil.ignore_patterns("logs"))
        (self.staging / "report").mkdir(parents=True, exist_ok=True)
        stems = {nb.stem for nb in self.notebooks}  # a renamed notebook's old results must not linger
        for path in (self.staging / "report").glob("*.json"):
            if path.name != report.TIMINGS_FILE and path.stem not in stems:
                path.unlink()
        for path in (self.staging / "notebooks").glob("*.ipynb"):
            if path.stem not in stems:
                path.unlink()
        timings = {k: v for k, v in report.load_timings(self.staging / "report").items() if k in stems}
        write_json_atomically(self.staging / "report" / report.TIMINGS_FILE, timings)
        state = course_state.CourseState.load(self.staging)
        state.stages = {name: record for name, record in state.stages.items() if name in stems}
        return state

    def kernel_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["COURSE_PROFILE"] = self.profile
        env[report.BUILD_DIR_ENV] = str(self.staging)  # report.record and the model card write into this run
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def execute(self) -> int:
        state = self.prepare()
        folders = course_state.output_folders(self.root, self.profile)
        fingerprint = course_state.environment_fingerprint(self.root, self.profile)
        chain_broken = self.fresh  # once a stage runs, every later one runs too: its inputs may have changed
        names = [nb.stem for nb in self.notebooks]
        progress = ProgressLine()
        print(f"profile {self.profile}: results in {self.shown(self.current)}/  (per-cell limit {self.timeout} s)",
              flush=True)
        for index, notebook in enumerate(self.notebooks):
            fingerprint = course_state.stage_fingerprint(fingerprint, notebook)
            name = notebook.stem
            record = state.stages.get(name)
            if notebook not in self.selected:
                if chain_broken and record is not None:
                    record.fingerprint = ""  # its inputs changed under it: the next run must run it
                continue
            now = course_state.snapshot(self.root, folders)
            reusable = (not chain_broken and record is not None and record.fingerprint == fingerprint
                        and (self.staging / "notebooks" / notebook.name).exists()
                        and state.unchanged_outputs(name, names[index + 1:], now))
            if reusable:
                took = f", ran in {record.seconds:.1f} s" if record.seconds is not None else ""
                print(f"{name:<22} reused: notebook, utils, profile and inputs unchanged since {record.finished}{took}",
                      flush=True)
                continue
            chain_broken = True
            print(f"{name:<22} running ...", flush=True)
            (self.staging / "report" / f"{name}.json").unlink(missing_ok=True)  # a stale record must not survive
            out = self.staging / "notebooks" / notebook.name
            try:
                seconds = run_notebook(notebook, out, timeout=self.timeout, env=self.kernel_env(),
                                       log_path=self.staging / "logs" / f"{name}.log", show=progress,
                                       timeout_hint=f"make course TIMEOUT={self.timeout * 3}")
            except (NotebookFailed, Interrupted) as error:
                progress.clear()
                return self.failed(error, out)
            progress.clear()
            print(f"{name:<22} done in {seconds:.1f} s", flush=True)
            report.record_timing(name, seconds, self.staging / "report")
            after = course_state.snapshot(self.root, folders)
            state.stages[name] = course_state.StageRecord(fingerprint, course_state.written_between(now, after),
                                                          round(seconds, 1))
        return self.finish(state)

    def failed(self, error: Exception, partial: Path) -> int:
        kept = (f"The last complete results are unchanged in {self.shown(self.current)}/."
                if self.current.exists() else "No complete results yet for this profile.")
        if isinstance(error, Interrupted):
            print(f"Interrupted: {error}. {kept} Partial notebook: {self.shown(partial)}", file=sys.stderr)
            return 130
        print(f"FAILED {error}", file=sys.stderr)
        print(f"  Partial notebook (this run's outputs only): {self.shown(partial)}", file=sys.stderr)
        print(f"  {kept}", file=sys.stderr)
        return 1 if not isinstance(error, CellTimedOut) else 124

    def finish(self, state: course_state.CourseState) -> int:
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for record in state.stages.values():
            record.finished = record.finished or finished
        state.save(self.staging)
        write_json_atomically(self.staging / RUN_FILE, {"profile": self.profile, "finished": finished,
                                                        "machine": _machine(), "python": platform.python_version(),
                                                        "load_average": [self.load_at_start, _load()]})
        card = report.render(self.staging / "report")
        model_card.write_model_card(self.staging / "report")
        self.swap()
        print(f"\nExecuted notebooks: {self.shown(self.current / 'notebooks')}/\n"
              f"Report card:        {self.shown(self.current / card.name)}\n"
              f"Model card:         {self.shown(self.current / 'MODEL_CARD.md')}")
        return 0

    def swap(self) -> None:
        """The staging folder becomes the results: two renames, and a cut between them is undone next run."""
        shutil.rmtree(self.previous, ignore_errors=True)
        if self.current.exists():
            os.replace(self.current, self.previous)
        os.replace(self.staging, self.current)
        shutil.rmtree(self.previous, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.course", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, help="overrides COURSE_PROFILE")
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 02")
    parser.add_argument("--fresh", action="store_true", help="run every notebook, even those unchanged")
    parser.add_argument("--timeout", type=int, default=None,
                        help=f"seconds one cell may run (default per profile: {CELL_TIMEOUT_S})")
    parser.add_argument("--notebooks", type=Path, default=REPO_ROOT / "notebooks", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)  # tests: another build/
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["COURSE_PROFILE"] = args.profile
    try:
        profile = profile_name()
    except (ProfileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = Run(args.root, args.notebooks, profile, args.fresh, args.timeout or CELL_TIMEOUT_S[profile], args.only)
    if not run.selected:
        print(f"error: no notebook in {run.shown(args.notebooks)} matches {args.only}", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        code = run.execute()
    except KeyboardInterrupt:  # between two notebooks, or while copying results
        print(f"Interrupted. The last complete results are unchanged in {run.shown(run.current)}/.", file=sys.stderr)
        return 130
    if code == 0:
        print(f"make course took {time.monotonic() - start:.1f} s")
    return code


if __name__ == "__main__":
    code = main()
    if code == 130:  # Ctrl-C: results and message are written; skip the interpreter's teardown of
        sys.stdout.flush()  # half-closed kernel sockets, which can abort in libzmq after the message
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
