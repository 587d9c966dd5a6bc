"""tools.course, the runner behind `make course`: per-profile results, swap on success, reuse, limits, Ctrl-C.

Each test runs small notebooks of its own (real kernels, a few seconds each) against a
temporary repository root, so the learner's build/, data/ and checkpoints/ are never touched.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from tools import course
from tools.notebook_runner import first_line, run_notebook, static_progress_bars
from utils.config import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def write_notebook(path: Path, *cells: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


# A stage that records a figure and writes a file where a real notebook writes its data (cfg.paths).
STAGE = """import os
from pathlib import Path
from utils import config, report
paths = config.Paths(Path(os.environ["COURSE_TEST_ROOT"]), config.profile_name())
paths.processed.mkdir(parents=True, exist_ok=True)
(paths.processed / "{name}.txt").write_text("{text}")
report.record("{name}", {{"value": {value}}})"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A temporary repository root with two stages; the runner's kernels find it in COURSE_TEST_ROOT."""
    monkeypatch.setenv("COURSE_TEST_ROOT", str(tmp_path))
    monkeypatch.delenv("COURSE_BUILD_DIR", raising=False)
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks / "01_first.ipynb", STAGE.format(name="01_first", text="one", value=1.5))
    write_notebook(notebooks / "02_second.ipynb", STAGE.format(name="02_second", text="two", value=2))
    return tmp_path


def run_course(root: Path, *args: str) -> int:
    return course.main(["--profile", "ci", "--notebooks", str(root / "notebooks"), "--root", str(root), *args])


def tree_hashes(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders``: byte-identical trees have equal dicts."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_results_per_profile_then_reused_then_rerun_from_what_changed(repo, capsys):
    assert run_course(repo) == 0
    results = repo / "build" / "ci"
    assert json.loads((results / "report" / "02_second.json").read_text())["figures"] == {"value": 2}
    assert (results / "notebooks" / "01_first.ipynb").exists() and (results / "MODEL_CARD.md").exists()
    assert "| value | 1.500 |" in (results / "report.md").read_text()
    assert not (repo / "build" / "ci.next").exists(), "the staging folder was swapped in"
    capsys.readouterr()

    assert run_course(repo) == 0  # nothing changed: nothing runs
    out = capsys.readouterr().out
    assert out.count("reused: notebook, utils, profile and inputs unchanged") == 2 and "running" not in out

    write_notebook(repo / "notebooks" / "02_second.ipynb", STAGE.format(name="02_second", text="2", value=3))
    assert run_course(repo) == 0  # a changed notebook runs again; the stage before it does not
    out = capsys.readouterr().out
    assert "01_first               reused" in out and "02_second              running" in out

    (repo / "data" / "processed" / "ci" / "01_first.txt").write_text("edited by hand")
    assert run_course(repo) == 0  # a stage's output changed on disk: it and every later stage run again
    out = capsys.readouterr().out
    assert "01_first               running" in out and "02_second              running" in out

    assert run_course(repo, "--fresh") == 0
    assert capsys.readouterr().out.count("running ...") == 2


def test_a_failed_run_leaves_the_last_complete_results_and_says_where_the_partial_notebook_is(repo, capsys):
    assert run_course(repo) == 0
    results = repo / "build" / "ci"
    before = tree_hashes(results)
    write_notebook(repo / "notebooks" / "02_second.ipynb",
                   "from utils import report\nreport.record('02_second', {'value': 99})",
                   "# the learner's mistake\nraise ValueError('a broken cell')",
                   "print('never runs')")
    assert run_course(repo) == 1
    err = capsys.readouterr().err
    assert "02_second.ipynb: cell 2, starting `raise ValueError('a broken cell')` raised ValueError: a broken cell" in err
    assert "Partial notebook" in err and "build/ci.next/notebooks/02_second.ipynb" in err
    assert tree_hashes(results) == before, "the last complete results are byte-identical"
    partial = nbformat.read(repo / "build" / "ci.next" / "notebooks" / "02_second.ipynb", as_version=4)
    assert partial.cells[2].outputs == [], "a partial notebook holds only this run's outputs"


def test_a_ci_run_leaves_the_cpu_profile_results_byte_identical(repo):
    """What `make test` (ci) does to a learner's cpu results: nothing."""
    cpu = [repo / "build" / "cpu", repo / "data" / "processed" / "cpu", repo / "checkpoints" / "cpu"]
    for folder, name, text in [(cpu[0] / "report", "05_evaluation.json", '{"stage": "05_evaluation"}'),
                               (cpu[0], "report.md", "# Report card (profile `cpu`)"),
                               (cpu[0], "MODEL_CARD.md", "validation perplexity 130.9"),
                               (cpu[1], "tokens.bin", "cpu tokens"), (cpu[2] / "chat", "model.safetensors", "w")]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = tree_hashes(*cpu)
    # Every way a notebook writes results: a record, the report card, the model card, its data folder.
    write_notebook(repo / "notebooks" / "03_probe.ipynb",
                   STAGE.format(name="03_probe", text="ci data", value=394.2),
                   "from utils import model_card, report\nmodel_card.write_model_card()\nreport.render()")
    assert run_course(repo) == 0
    assert tree_hashes(*cpu) == before
    assert (repo / "build" / "ci" / "MODEL_CARD.md").exists() and (repo / "data" / "processed" / "ci").exists()


def test_a_renamed_notebook_leaves_no_stale_stage(repo):
    assert run_course(repo) == 0
    (repo / "notebooks" / "02_second.ipynb").rename(repo / "notebooks" / "03_second.ipynb")
    write_notebook(repo / "notebooks" / "03_second.ipynb", STAGE.format(name="03_second", text="two", value=2))
    assert run_course(repo) == 0
    results = repo / "build" / "ci"
    assert not (results / "report" / "02_second.json").exists() and (results / "report" / "03_second.json").exists()
    assert "02_second" not in json.loads((results / "report" / "timings.json").read_text())


def test_a_cell_over_the_limit_is_stopped_with_where_and_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COURSE_BUILD_DIR", raising=False)
    write_notebook(tmp_path / "notebooks" / "01_slow.ipynb", "x = 1", "import time\ntime.sleep(120)")
    assert run_course(tmp_path, "--timeout", "10") == 124
    err = capsys.readouterr().err
    assert "01_slow.ipynb: cell 2, starting `import time` ran for more than 10 s" in err
    assert "make course TIMEOUT=30" in err and "make lab" in err


def test_interact_outputs_never_stall_the_runner(tmp_path):
    """The nbclient widget race (jupyter/nbclient#312): stalled 11 of 15 such runs for the whole timeout.

    Each interact below sends 100 outputs through nbclient's Output-widget mimic while the
    cell's reply arrives. With the fix every cell finishes; a stall would hit the 20 s limit.
    """
    interact = ("import ipywidgets as widgets\nfrom IPython.display import display\n"
                "def show(n=1):\n    for i in range(100):\n        display(i)\n"
                "widgets.interact(show, n=widgets.IntSlider(value=1))")
    path = write_notebook(tmp_path / "widgets.ipynb", *[interact] * 4)
    seconds = run_notebook(path, tmp_path / "out.ipynb", timeout=20, env=dict(os.environ),
                           log_path=tmp_path / "kernel.log")
    assert seconds > 0
    state = nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata.widgets
    outputs = [m["state"]["outputs"] for m in state["application/vnd.jupyter.widget-state+json"]["state"].values()
               if m["model_name"] == "OutputModel"]
    assert [len(o) for o in outputs] == [100] * 4, "every output reached the widget"
    assert "without encryption" not in (tmp_path / "kernel.log").read_text(), "the kernel runs over IPC, not TCP"


def take_ctrl_c():
    """In the runner's process, before it starts: SIGINT acts as it does for a terminal's foreground job.

    A shell starts background jobs (``make test &``, ``nohup ... &``) with SIGINT ignored, the
    runner inherits that, and Python then installs no KeyboardInterrupt at all: a Ctrl-C
    could never reach such a job from a terminal, so the test gives the runner what a
    terminal would.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_with_one_line_and_no_traceback(tmp_path):
    started = tmp_path / "cell-1-ran"
    write_notebook(tmp_path / "notebooks" / "01_long.ipynb", f"open({str(started)!r}, 'w').close()",
                   "import time\ntime.sleep(300)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("COURSE_BUILD_DIR", None)
    runner = subprocess.Popen([sys.executable, "-m", "tools.course", "--profile", "ci", "--notebooks",
                               str(tmp_path / "notebooks"), "--root", str(tmp_path)], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=take_ctrl_c)
    log = tmp_path / "build" / "ci.next" / "notebooks"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not started.exists():
        time.sleep(0.2)
    time.sleep(3)  # cell 2 starts right after cell 1's reply
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, (out, err)
    assert "Traceback" not in err and "Task exception" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Interrupted: 01_long.ipynb: stopped at cell 2"), err
    assert str(log / "01_long.ipynb").endswith(lines[0].split("Partial notebook: ")[1])


def test_first_line_skips_comments():
    assert first_line("# NBVAL_CHECK_OUTPUT\n\nmodel = GPT(config)\nmore") == "model = GPT(config)"
    assert first_line("x" * 100).endswith("…") and len(first_line("x" * 100)) == 60


def test_progress_line_says_cells_done_elapsed_and_the_running_cell():
    import io

    from tools.notebook_runner import Progress, ProgressLine

    import time

    now = time.monotonic()  # started 95 s ago, the cell 35 s ago: the test holds however loaded the machine is
    progress = Progress("05_evaluation", total=40, done=12, cell_number=25, first_line="widgets.interact(",
                        started=now - 95, cell_started=now - 35)
    text = ProgressLine(io.StringIO()).text(progress)
    assert "12/40 cells" in text and "cell 25: widgets.interact(" in text
    assert re.search(r" 1:3\d ", text) and re.search(r"\(0:3\d in this cell\)", text)


def test_a_stored_progress_bar_reads_as_it_ended_not_frozen_at_its_first_frame():
    """tqdm's notebook bar is stored as its first frame; the saved widget state holds its last."""
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("train()", outputs=[
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": view,
                                                     "text/plain": "training:   0%|          | 0/90 [00:00<?, ?it/s]"}),
        nbformat.v4.new_output("display_data", data={"text/plain": "0%| of something else"}),
    ])])
    states = {
        "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": "training:\u2007100%"}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": 90.0, "max": 90.0}},
        "r": {"model_name": "HTMLModel", "state": {"value": "\u200790/90\u2007[01:51&lt;00:00]"}},
    }
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": states}}
    assert static_progress_bars(notebook) == 1
    bar, other = notebook.cells[0].outputs
    assert bar["data"]["text/plain"] == "training: 100%|##########| 90/90 [01:51<00:00]"
    assert other["data"]["text/plain"] == "0%| of something else"  # not a widget: left as it is
