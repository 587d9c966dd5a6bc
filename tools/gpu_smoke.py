"""Every notebook and solution through the GPU code paths, at ci sizes: ``make gpu-smoke``.

``python -m tools.gpu_smoke`` answers one question in minutes: does the course run on a
CUDA GPU? The ``gpu`` profile trains for an hour; this runs the same code on the GPU at
the ``ci`` profile's sizes (seconds per notebook on a CPU):

- **No CUDA, nothing to do**: without a CUDA GPU it says so in one line and exits 0.
- **The GPU paths**: ``config.pick_device()`` finds CUDA, so every notebook's model,
  batches and generators go to the GPU, and training autocasts to bf16 (fp16 with a
  GradScaler on GPUs without bf16, such as the T4). Each executed notebook must print
  ``device=cuda`` (``config.load``'s first line), or it counts as failed.
- **What ci sizes do not reach**: first, ``training.train`` itself runs a few steps on
  the GPU in fp16 with a GradScaler, in bf16 (where the GPU has it) and under
  ``torch.compile``, and must learn a repeating sequence; with two GPUs or more, also
  ``utils.pretrain`` under torchrun (NCCL needs a GPU per process, so one GPU cannot).
- **Yours stays yours**: the notebooks run in a throwaway copy of the course
  (``build/gpu-smoke/course``, made fresh each run): its data, checkpoints and build
  folder are its own. SmolLM2's converted weights are linked from ``checkpoints/`` when
  they are there (they are the same for every run). Executed notebooks and logs stay in
  ``build/gpu-smoke/`` to read afterwards.
- **Offline by default**, so every run does the same work; ``--online`` lets the cells
  that need only the hub run too (GPT-2 in 03 and 05, ARC-Easy in 05); cells kept for the
  ``gpu`` profile itself (06's GPT-2 chat model, 08's GPT-2 probe) do not run at ci sizes.

Options: ``--only 04 05`` (name prefixes, notebooks and solutions), ``--skip paths
solutions``. The budget is 10 minutes on one GPU; the summary says when a run took longer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.notebook_runner import NotebookFailed, ProgressLine, run_notebook
from utils.config import REPO_ROOT, cuda_available
from utils.report import BUILD_DIR_ENV

PROFILE = "ci"  # the sizes; the device is the GPU because pick_device() finds it
BUDGET_S = 600  # the whole smoke run, on one GPU
CELL_TIMEOUT_S = 300  # the ci profile's per-cell limit (tools.course)
FOLDERS = ("notebooks", "solutions")  # run in this order: solutions start from what the notebooks saved
PARTS = ("paths", "notebooks", "solutions")
# Generated folders that never go into the copy (the copy makes its own); the rest of the tree does.
NOT_COPIED = {".git", ".venv", ".whl", "build", "checkpoints", "data/processed", "data/raw", "data/nltk_data"}
NOT_COPIED_ANYWHERE = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
SHARED_CACHES = ("checkpoints/smollm2-135m-instruct",)  # the same in every run: linked, not rebuilt
DEVICE_LINE = re.compile(r"profile=(\w+)\s+device=(\S+)")  # what config.load() prints first


@dataclass
class Outcome:
    name: str
    seconds: float
    error: str | None = None  # None = passed
    device: str | None = None  # what the notebook said it ran on

    @property
    def ok(self) -> bool:
        return self.error is None


def select(root: Path, only: list[str] | None = None, skip: tuple[str, ...] = ()) -> list[Path]:
    """The notebooks to run, in order: ``notebooks/NN_*.ipynb``, then ``solutions/NN_*.ipynb``.

    ``only``: name prefixes (``04`` picks 04's notebook and its solutions); ``skip``: parts left out.
    """
    chosen = []
    for folder in FOLDERS:
        if folder in skip:
            continue
        for path in sorted((Path(root) / folder).glob("[0-9][0-9]_*.ipynb")):
            if not only or path.name.startswith(tuple(only)):
                chosen.append(path)
    return chosen


def make_workspace(root: Path, dest: Path) -> Path:
    """A fresh copy of the course in ``dest``, without generated folders; shared caches linked."""
    root, dest = Path(root), Path(dest)

    def generated(folder: str, names: list[str]) -> list[str]:
        where = Path(folder).relative_to(root)
        return [n for n in names if (where / n).as_posix() in NOT_COPIED or n in NOT_COPIED_ANYWHERE
                or n.endswith(".egg-info")]

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(root, dest, ignore=generated)
    for relative in SHARED_CACHES:
        if (root / relative).is_dir():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            (dest / relative).symlink_to((root / relative).resolve(), target_is_directory=True)
    return dest


def kernel_env(workspace: Path, online: bool) -> dict[str, str]:
    """The kernels' environment: the copy's ``utils`` first on the path, the ci sizes, offline unless asked."""
    env = dict(os.environ)
    env["COURSE_PROFILE"] = PROFILE
    env["PYTHONPATH"] = os.pathsep.join([str(workspace)] + [p for p in [env.get("PYTHONPATH")] if p])
    env[BUILD_DIR_ENV] = str(workspace / "build" / PROFILE)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not online:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def notebook_device(path: Path) -> str | None:
    """The device an executed notebook says it ran on (``config.load``'s line), or None."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            match = DEVICE_LINE.search(text if isinstance(text, str) else "".join(text))
            if match:
                return match.group(2)
    return None


def run_notebooks(paths: list[Path], workspace: Path, out: Path, env: dict[str, str],
                  timeout: int = CELL_TIMEOUT_S) -> list[Outcome]:
    """Run each notebook (paths inside ``workspace``) with a fresh kernel; a failure does not stop the rest."""
    outcomes, progress = [], ProgressLine()
    for path in paths:
        relative = path.relative_to(workspace)
        executed = out / relative
        print(f"{relative.as_posix():<48} running ...", flush=True)
        start = time.monotonic()
        try:
            run_notebook(path, executed, timeout=timeout, env=env, log_path=out / "logs" / f"{path.stem}.log",
                         show=progress, timeout_hint="python -m tools.gpu_smoke --timeout SECONDS")
            error = None
        except NotebookFailed as failure:
            error = str(failure)
        progress.clear()
        device = notebook_device(executed) if executed.exists() else None
        if error is None and device is not None and not device.startswith("cuda"):
            error = f"{relative}: ran on {device}, not on the GPU (config.load printed device={device})"
        outcome = Outcome(relative.as_posix(), time.monotonic() - start, error, device)
        status = "ok" if outcome.ok else "FAILED"
        print(f"{outcome.name:<48} {status} in {outcome.seconds:.1f} s (device={device or '?'})", flush=True)
        if not outcome.ok:
            print(f"  {error}", flush=True)
        outcomes.append(outcome)
    return outcomes


# --------------------------------------------------------------------------- the training paths


def training_paths(device: str = "cuda", cases=None, steps: int = 30) -> list[Outcome]:
    """``training.train`` on ``device`` in each (dtype, compile) case: it must learn a repeating sequence.

    Default cases on a GPU: fp16 (GradScaler on), bf16 where the GPU has it, and torch.compile.
    A tiny GPT on a sequence that repeats every 64 tokens: each token fixes the next one, so a
    working loop takes the validation loss well below half of uniform's ln 64 in 30 steps.
    """
    import numpy as np
    import torch

    from utils import training
    from utils.model import GPT, GPTConfig

    if cases is None:
        bf16 = torch.cuda.is_bf16_supported()
        cases = [("float16", False)] + ([("bfloat16", False)] if bf16 else []) + [("bfloat16" if bf16 else "float16", True)]
    vocab = 64
    ids = np.tile(np.arange(vocab, dtype=np.int64), 200)  # (12800,)
    outcomes = []
    for dtype, compiled in cases:
        name = f"training.train {dtype}" + (" + torch.compile" if compiled else "")
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0))
        cfg = training.TrainConfig(batch_size=8, block_size=32, max_iters=steps, warmup_iters=5, learning_rate=3e-3,
                                   eval_interval=steps, eval_iters=2, device=device, dtype=dtype, compile=compiled,
                                   checkpoint=False, progress=False, verbose=False)
        start, error = time.monotonic(), None
        try:
            metrics = training.train(model, ids, ids, cfg)
            if metrics["dtype"] != dtype or not metrics["device"].startswith(device):
                error = f"{name}: trained on {metrics['device']} in {metrics['dtype']}"
            elif not metrics["val_loss"] < math.log(vocab) / 2:
                error = f"{name}: validation loss {metrics['val_loss']:.3f} after {steps} steps, not below ln(64)/2"
        except Exception as failure:  # report and go on: the notebooks still run
            error = f"{name}: {type(failure).__name__}: {failure}"
        outcomes.append(Outcome(name, time.monotonic() - start, error, device))
    return outcomes


def torchrun_path(workspace: Path, out: Path, env: dict[str, str], gpus: int) -> Outcome:
    """``utils.pretrain`` under torchrun, one process per GPU (NCCL), a few steps."""
    text = out / "torchrun" / "text.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 2000, encoding="utf-8")
    run_dir = out / "torchrun" / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "utils.pretrain", "--text", str(text), "--tokenizer", "char", "--n-layer", "2", "--n-head", "2",
               "--n-embd", "64", "--block-size", "32", "--batch-size", "8", "--max-iters", "20", "--device", "cuda",
               "--eval-interval", "20", "--eval-iters", "2", "--out", str(run_dir), "--no-progress"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=CELL_TIMEOUT_S)
    error = None
    if result.returncode != 0:
        error = f"torchrun exited with {result.returncode}: {result.stderr[-2000:]}"
    elif json.loads((run_dir / "metrics.json").read_text())["world_size"] != gpus:
        error = f"torchrun: metrics.json says another world size than {gpus}"
    return Outcome(f"torchrun utils.pretrain, {gpus} GPUs", time.monotonic() - start, error, "cuda")


# --------------------------------------------------------------------------- the run


def summary(outcomes: list[Outcome], seconds: float, budget: float = BUDGET_S) -> str:
    failed = [o for o in outcomes if not o.ok]
    unconfirmed = [o.name for o in outcomes if o.ok and o.device is None]
    lines = [f"gpu-smoke: {len(outcomes) - len(failed)} of {len(outcomes)} passed in {seconds:.0f} s"
             + (f" (over the {budget:.0f} s budget)" if seconds > budget else f" (budget {budget:.0f} s)")]
    lines += [f"  FAILED {o.name}: {o.error.splitlines()[0]}" for o in failed]
    if unconfirmed:
        lines.append(f"  note: no device line (config.load) in {', '.join(unconfirmed)}")
    return "\n".join(lines)


def run(root: Path = REPO_ROOT, only: list[str] | None = None, skip: tuple[str, ...] = (), online: bool = False,
        timeout: int = CELL_TIMEOUT_S, out: Path | None = None) -> int:
    if not cuda_available():
        print("gpu-smoke: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to run.")
        return 0
    root = Path(root)
    out = Path(out) if out is not None else root / "build" / "gpu-smoke"
    chosen = select(root, only, skip)
    if not chosen and (only or "paths" in skip):
        print(f"gpu-smoke: no notebook selected (--only {' '.join(only or [])} --skip {' '.join(skip)}).",
              file=sys.stderr)
        return 2
    for folder in FOLDERS:
        shutil.rmtree(out / folder, ignore_errors=True)  # this run's executed notebooks only
    workspace = make_workspace(root, out / "course")
    env = kernel_env(workspace, online)
    import torch

    gpus = torch.cuda.device_count()
    print(f"gpu-smoke: {torch.cuda.get_device_name(0)} x{gpus}, profile {PROFILE} sizes, "
          f"{'online' if online else 'offline'}; a copy of the course in {workspace}", flush=True)
    start = time.monotonic()
    outcomes = []
    if "paths" not in skip:
        outcomes += training_paths("cuda")
        if gpus >= 2:
            outcomes.append(torchrun_path(workspace, out, env, gpus))
        for outcome in outcomes:
            print(f"{outcome.name:<48} {'ok' if outcome.ok else 'FAILED'} in {outcome.seconds:.1f} s", flush=True)
            if not outcome.ok:
                print(f"  {outcome.error}", flush=True)
        torch.cuda.empty_cache()
    copies = [workspace / path.relative_to(root) for path in chosen]
    outcomes += run_notebooks(copies, workspace, out, env, timeout)
    print(summary(outcomes, time.monotonic() - start))
    print(f"Executed notebooks and logs: {out}")
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 04 05")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--online", action="store_true", help="let the cells that use the hub run (default: offline)")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds one cell may run")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)  # tests: another course
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return run(args.root, args.only, tuple(args.skip), args.online, args.timeout, args.out)


if __name__ == "__main__":
    sys.exit(main())
