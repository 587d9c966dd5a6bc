"""Run one notebook headless, the way ``make course`` needs it: never hang, always say where it is.

``run_notebook(path, out_path, ...)`` executes a notebook with a fresh kernel in the
notebook's folder (as JupyterLab would), writes the executed copy to ``out_path``
(also when it fails: the partial notebook holds only this run's outputs) and returns
the seconds it took. What it does differently from a plain ``nbclient`` run:

- **The widget hang.** ``nbclient`` mimics an ``ipywidgets.Output`` widget (``interact``
  has one) by sending its state back to the kernel on the shell socket with a
  *blocking* send through a shadow of the asyncio socket, while another task awaits
  the cell's reply on that same socket. A ZeroMQ socket signals readiness
  edge-triggered: when the reply arrives during that blocking send, the send consumes
  the wake-up, the asyncio poller never hears of the reply, and the runner waits until
  the cell timeout, with the kernel idle (jupyter/nbclient#312). ``_OutputWidget``
  sends through the asyncio socket itself, which re-checks for pending events after
  every send. Measured on a stress notebook (100 outputs from one ``interact``): 11
  of 15 runs stalled for the whole timeout before, 0 of 15 after.
- **The kernel runs over IPC** (a private temporary folder) instead of TCP on POSIX
  systems: no ports to collide with, nothing reachable from the network, and no
  "running over TCP without encryption" warning. The kernel's own stderr goes to a
  log file, so the progress line stays clean.
- **A per-cell time limit** with a message that names the notebook, the cell and
  what to do (``CellTimedOut``).
- **Progress bars read as they ended.** A ``tqdm`` bar in a notebook is a widget whose
  stored text is its first frame ("training:   0%|"), which GitHub shows as a frozen
  bar; ``static_progress_bars`` replaces that text with the bar's last state, read from
  the widget state the run saves ("training: 100%|##########| 90/90 [01:51<00:00]").
- **Ctrl-C** cancels the run and shuts the kernel down at once; ``Interrupted`` says
  where it stopped. The kernel runs in a worker thread's event loop, so the main
  thread keeps Python's own Ctrl-C handling and shows progress meanwhile.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

IOPUB_TIMEOUT_S = 30  # after a cell's reply, how long to wait for its last outputs (a busy 2-core machine is slow)
STARTUP_TIMEOUT_S = 120  # the kernel's start (imports on a busy machine)


class NotebookFailed(Exception):
    """A notebook stopped before its end; the message says where and what to do."""


class CellTimedOut(NotebookFailed):
    pass


class Interrupted(Exception):
    """Ctrl-C: the run was cancelled and the kernel shut down."""


@dataclass
class Progress:
    """Where a running notebook is; the worker thread writes it, the main thread shows it."""

    notebook: str
    total: int  # code cells to run
    done: int = 0
    cell_number: int | None = None  # 1-based position of the running cell among all cells
    first_line: str = ""
    started: float = field(default_factory=time.monotonic)
    cell_started: float = field(default_factory=time.monotonic)

    def where(self) -> str:
        """``cell 36 of 52, starting `widgets.interact(` ``: enough to find it in JupyterLab."""
        if self.cell_number is None:
            return "before the first cell (starting the kernel)"
        return f"cell {self.cell_number}, starting `{self.first_line}`"


def first_line(source: str, width: int = 60) -> str:
    """The first line of a cell that is not a comment or blank, cut to ``width``."""
    lines = [line.strip() for line in source.splitlines()]
    code = [line for line in lines if line and not line.startswith("#")] or [line for line in lines if line] or [""]
    line = code[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _output_widget_class():
    """nbclient's Output-widget mimic, sending through the asyncio socket (see the module docstring)."""
    from nbclient.jsonutil import json_clean
    from nbclient.output_widget import OutputWidget

    class _OutputWidget(OutputWidget):
        def _publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            content = json_clean(dict(data=data or {}, comm_id=self.comm_id, **keys))
            session = self.kernel_client.session
            msg = session.msg(msg_type, content=content, parent=self.parent_header, metadata=metadata or {})
            # Not session.send(socket, msg): for an asyncio socket it sends through a blocking shadow,
            # which can swallow the wake-up of a reply that arrives meanwhile.
            self.kernel_client.shell_channel.socket.send_multipart(session.serialize(msg))

    return _OutputWidget


def _kernel_config(ipc_dir: str | None):
    from traitlets.config import Config

    config = Config()
    if ipc_dir is not None:
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(ipc_dir, "kernel")  # short: a socket path has ~100 characters at most
    return config


def _client(notebook, timeout: int | None, cwd: Path, progress: Progress, ipc_dir: str | None, log: logging.Logger):
    from nbclient import NotebookClient

    def on_cell_execute(cell, cell_index):
        progress.cell_number = cell_index + 1
        progress.first_line = first_line(cell.source)
        progress.cell_started = time.monotonic()

    def on_cell_executed(cell, cell_index, execute_reply):
        progress.done += 1

    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
        iopub_timeout=IOPUB_TIMEOUT_S, startup_timeout=STARTUP_TIMEOUT_S, config=_kernel_config(ipc_dir),
        on_cell_execute=on_cell_execute, on_cell_executed=on_cell_executed, log=log,
    )
    client.widget_registry["@jupyter-widgets/output"]["OutputModel"] = _output_widget_class()
    return client


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def progress_bar_text(states: dict, model_id: str) -> str | None:
    """The last frame of a tqdm notebook bar (an HBox of text, progress, text) as plain text, else None."""
    box = states.get(model_id, {})
    children = [c.removeprefix("IPY_MODEL_") for c in box.get("state", {}).get("children", [])]
    if box.get("model_name") != "HBoxModel" or len(children) != 3:
        return None
    left, bar, right = (states.get(c, {}) for c in children)
    if bar.get("model_name") != "FloatProgressModel":
        return None
    value, total = bar["state"].get("value", 0), bar["state"].get("max") or 1
    filled = max(0, min(10, round(10 * value / total)))
    text = (f"{left.get('state', {}).get('value', '')}|{'#' * filled}{' ' * (10 - filled)}|"
            f"{right.get('state', {}).get('value', '')}")
    return html.unescape(text).replace("\u2007", " ")


def static_progress_bars(notebook) -> int:
    """Give every stored progress-bar widget its last frame as its text (see the module docstring); returns how many."""
    states = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    changed = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            text = progress_bar_text(states, view["model_id"]) if view else None
            if text is not None:
                output["data"]["text/plain"] = text
                changed += 1
    return changed


def clear_outputs(notebook) -> None:
    """Drop stored outputs and widget state, so a partial run never mixes this run's outputs with old ones."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    notebook.metadata.pop("widgets", None)


def _log_to(path: Path) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(f"tools.notebook_runner.{path.stem}")
    logger.propagate = False
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler


def run_notebook(path: Path, out_path: Path, *, timeout: int | None, env: dict[str, str], log_path: Path,
                 show: Callable[[Progress], None] | None = None, timeout_hint: str = "") -> float:
    """Execute ``path`` with a fresh kernel; write the executed notebook to ``out_path``; return the seconds.

    ``timeout``: seconds one cell may run. ``env``: the kernel's environment. ``log_path``:
    the kernel's stderr and the client's warnings. ``show(progress)`` is called about twice a
    second from this (the main) thread. Raises ``NotebookFailed`` (``CellTimedOut``) or
    ``Interrupted``; the partial notebook is in ``out_path`` either way.
    """
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = nbformat.read(path, as_version=4)
    clear_outputs(notebook)
    code_cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.strip()]
    progress = Progress(path.stem, total=len(code_cells))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ipc_dir = tempfile.mkdtemp(prefix="course-kernel-") if os.name == "posix" else None
    log, handler = _log_to(log_path)
    interrupted = threading.Event()
    try:
        with open(log_path, "ab") as kernel_log:
            client = _client(notebook, timeout, path.parent, progress, ipc_dir, log)
            worker = _Worker(client.async_execute(env=env, stdout=kernel_log, stderr=kernel_log))
            try:
                worker.start()
                while worker.is_alive():
                    worker.join(0.5)
                    if show is not None:
                        show(progress)
            except KeyboardInterrupt:
                interrupted.set()
                client.shutdown_kernel = "immediate"  # a busy kernel would ignore a polite shutdown request
                worker.cancel()
                try:
                    worker.join()
                except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the kernel to go
                    pass
        seconds = time.monotonic() - progress.started
        error = worker.error
    finally:
        log.removeHandler(handler)
        handler.close()
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)
        static_progress_bars(notebook)
        nbformat.write(notebook, out_path)

    name = path.name
    if interrupted.is_set():
        raise Interrupted(f"{name}: stopped at {progress.where()} ({progress.done} of {progress.total} code cells done)")
    if error is None:
        return seconds
    if isinstance(error, CellTimeoutError):
        raise CellTimedOut(
            f"{name}: {progress.where()} ran for more than {timeout} s, the per-cell limit, and was stopped.\n"
            f"  Still working (a slow or busy machine)? Give it longer: {timeout_hint or '--timeout SECONDS'}.\n"
            "  Stuck? Run the notebook in JupyterLab (make lab) and watch that cell."
        ) from None
    if isinstance(error, CellExecutionError):
        raise NotebookFailed(f"{name}: {progress.where()} raised {error.ename}: {error.evalue}") from None
    if isinstance(error, DeadKernelError):
        raise NotebookFailed(
            f"{name}: the kernel died at {progress.where()} (out of memory?). Its log: {log_path}"
        ) from None
    raise NotebookFailed(f"{name}: {type(error).__name__}: {error} (at {progress.where()}; log: {log_path})") from None


class _Worker(threading.Thread):
    """Runs one coroutine in its own event loop; ``cancel()`` from another thread."""

    def __init__(self, coroutine):
        super().__init__(daemon=True)
        self._coroutine = coroutine
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        self.error: BaseException | None = None

    def run(self):
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._coroutine)
        try:
            self._loop.run_until_complete(self._task)
        except BaseException as error:  # reported by run_notebook, in the main thread
            self.error = error
        finally:
            # nbclient leaves helper tasks behind when a cell is cancelled (its kernel-alive poll):
            # end them here, as asyncio.run does, rather than let them touch closed sockets later.
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self._loop.close()

    def cancel(self):
        if self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressLine:
    """Shows a running notebook: cells done of total, elapsed time, the running cell's first line.

    On a terminal one line is rewritten in place; in a log (no terminal) a line is printed
    when a cell has run for 30 s, then every minute, so a long run still shows it is alive.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_logged = {}

    def text(self, progress: Progress) -> str:
        now = time.monotonic()
        done = f"  {progress.done}/{progress.total} cells  {_clock(now - progress.started)}"
        if progress.cell_number is None:
            return done + "  starting the kernel"
        if progress.done == progress.total:
            return done + "  shutting the kernel down"
        return done + f"  ({_clock(now - progress.cell_started)} in this cell)  cell {progress.cell_number}: " \
                      f"{progress.first_line}"

    def __call__(self, progress: Progress) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + self.text(progress)[:width] + "\033[K")
            self.stream.flush()
            return
        running = time.monotonic() - progress.cell_started
        key = (progress.notebook, progress.cell_number)
        last = self._last_logged.get(key)
        if (last is None and running >= 30) or (last is not None and running - last >= 60):
            self._last_logged[key] = running
            print(f"  {progress.notebook}" + self.text(progress), file=self.stream, flush=True)

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
