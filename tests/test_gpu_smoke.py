"""make gpu-smoke on a machine without a GPU: it skips, and what it would run is checked on the CPU."""

from __future__ import annotations

import os

import nbformat
import torch

from tools import gpu_smoke
from utils.config import REPO_ROOT


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_smoke, "cuda_available", lambda: False)
    assert gpu_smoke.main(["--out", str(tmp_path / "smoke")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA GPU" in out
    assert not (tmp_path / "smoke").exists()  # nothing copied, nothing run


def test_selection_runs_notebooks_in_order_then_their_solutions():
    everything = gpu_smoke.select(REPO_ROOT)
    folders = [path.parent.name for path in everything]
    assert folders == sorted(folders) and set(folders) == {"notebooks", "solutions"}  # notebooks first
    notebooks = [p.name for p in everything if p.parent.name == "notebooks"]
    assert notebooks == sorted(notebooks) and notebooks[0].startswith("00_")
    assert [p.name for p in gpu_smoke.select(REPO_ROOT, only=["04"])] == [
        "04_training.ipynb", "04_training_solutions.ipynb"]
    assert all(p.parent.name == "notebooks" for p in gpu_smoke.select(REPO_ROOT, skip=("solutions",)))
    assert gpu_smoke.select(REPO_ROOT, only=["99"]) == []


def test_the_workspace_is_a_copy_without_generated_folders_and_with_the_shared_cache(tmp_path):
    root = tmp_path / "course"
    for folder in ("utils/__pycache__", "notebooks", "data/fixtures", "data/processed/ci", "data/raw", "build/ci",
                   "checkpoints/ci/pretrained", "checkpoints/smollm2-135m-instruct", "x.egg-info", "docs/build"):
        (root / folder).mkdir(parents=True)
    (root / "utils" / "config.py").write_text("# the course's code\n")
    (root / "data" / "fixtures" / "chats.jsonl").write_text("{}\n")
    (root / "checkpoints" / "smollm2-135m-instruct" / "model.safetensors").write_text("weights")
    copy = gpu_smoke.make_workspace(root, tmp_path / "smoke" / "course")
    kept = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*"))  # rglob does not enter the link
    assert kept == ["checkpoints", "checkpoints/smollm2-135m-instruct", "data", "data/fixtures",
                    "data/fixtures/chats.jsonl", "docs", "docs/build", "notebooks", "utils", "utils/config.py"]
    cache = copy / "checkpoints" / "smollm2-135m-instruct"
    assert cache.is_symlink() and (cache / "model.safetensors").read_text() == "weights"
    (copy / "utils" / "config.py").write_text("changed in the copy")  # a fresh copy each run
    assert gpu_smoke.make_workspace(root, copy) == copy and (copy / "utils" / "config.py").read_text() == \
        "# the course's code\n"


def test_kernels_import_the_copy_at_ci_sizes_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = gpu_smoke.kernel_env(tmp_path, online=False)
    assert env["PYTHONPATH"] == f"{tmp_path}{os.pathsep}/elsewhere"
    assert env["COURSE_PROFILE"] == "ci" and env["HF_HUB_OFFLINE"] == "1" == env["HF_DATASETS_OFFLINE"]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_HUB_OFFLINE" not in gpu_smoke.kernel_env(tmp_path, online=True)


def test_the_device_a_notebook_ran_on_is_read_from_config_load_s_line(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("cfg = config.load()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text="profile=ci  device=cuda  offline (embedded data)  seed=1337\n")]
    nb.cells = [nbformat.v4.new_code_cell("import os"), cell]
    nbformat.write(nb, tmp_path / "ran.ipynb")
    assert gpu_smoke.notebook_device(tmp_path / "ran.ipynb") == "cuda"
    nb.cells = nb.cells[:1]
    nbformat.write(nb, tmp_path / "silent.ipynb")
    assert gpu_smoke.notebook_device(tmp_path / "silent.ipynb") is None


def test_the_training_path_check_passes_a_working_loop_and_fails_one_that_does_not_learn(one_thread):
    """On the CPU: float32 and bf16 autocast (the GPU run adds fp16 + GradScaler and torch.compile)."""
    passed = gpu_smoke.training_paths("cpu", cases=[("float32", False), ("bfloat16", False)])
    assert [o.name for o in passed] == ["training.train float32", "training.train bfloat16"]
    assert all(o.ok for o in passed), [o.error for o in passed]
    [short] = gpu_smoke.training_paths("cpu", cases=[("float32", False)], steps=1)
    assert not short.ok and "not below ln(64)/2" in short.error


def test_a_run_reports_a_notebook_that_stayed_on_the_cpu(tmp_path, monkeypatch, capsys):
    """The whole run with real kernels on the CPU, CUDA pretended: one notebook says cuda, one really loads."""
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    (root / "utils").symlink_to(REPO_ROOT / "utils", target_is_directory=True)
    for name, source in (("00_says_cuda", 'print("profile=ci  device=cuda  offline  seed=1")'),
                         ("01_loads", "from utils import config\ncfg = config.load()\nprint(config.__file__)")):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source)]
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    monkeypatch.setattr(gpu_smoke, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "no GPU (test)")
    out = tmp_path / "smoke"
    assert gpu_smoke.main(["--root", str(root), "--out", str(out), "--skip", "paths", "--timeout", "120"]) == 1
    text = capsys.readouterr().out
    assert "notebooks/00_says_cuda.ipynb" in text and "1 of 2 passed" in text
    assert "FAILED notebooks/01_loads.ipynb: notebooks/01_loads.ipynb: ran on cpu, not on the GPU" in text
    executed = nbformat.read(out / "notebooks" / "01_loads.ipynb", as_version=4)
    assert str(out / "course" / "utils" / "config.py") in executed.cells[0].outputs[-1]["text"]  # the copy's utils
    assert not (root / "data").exists()  # the course itself was not touched


def test_nothing_selected_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_smoke, "cuda_available", lambda: True)
    assert gpu_smoke.main(["--root", str(REPO_ROOT), "--out", str(tmp_path), "--only", "99"]) == 2
