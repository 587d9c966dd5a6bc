"""The pretraining CLI (python -m utils.pretrain): every tokenizer, bad input, exact resume, torchrun.

Tiny models and a few steps each; the torchrun test starts 2 CPU processes (gloo).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.pretrain import PretrainError, main

REPO = Path(__file__).resolve().parent.parent
LINES = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "First Citizen: You are all resolved rather to die than to famish?",
    "All: Resolved. resolved.",
]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "5", "--eval-iters", "2", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "play.txt"
    path.write_text("\n".join(f"{i}. {LINES[i % 4]}" for i in range(300)) + "\n", encoding="utf-8")
    return path


def run_cli(text, out, *extra):
    return main(["--text", str(text), "--out", str(out), *TINY, *extra])


@pytest.mark.parametrize("tokenizer", ["char", "bpe", "gpt2"])
def test_each_tokenizer_trains_and_writes_metrics(text_file, tmp_path, tokenizer):
    extra = ["--vocab-size", "300"] if tokenizer == "bpe" else []
    run_cli(text_file, tmp_path, "--tokenizer", tokenizer, "--max-iters", "5", *extra)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iters"] == 5 and metrics["world_size"] == 1
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    assert metrics["tokens_per_second"] > 0
    assert (tmp_path / "model.safetensors").exists()
    card = json.loads((tmp_path / "config.json").read_text())
    expected = {"char": (tmp_path / "char_vocab.json").exists(), "bpe": (tmp_path / "tokenizer").is_dir(),
                "gpt2": card["vocab_size"] == 50257}
    assert expected[tokenizer]


def test_resume_ends_where_an_uninterrupted_run_does(text_file, tmp_path):
    run_cli(text_file, tmp_path / "straight", "--max-iters", "12")
    run_cli(text_file, tmp_path / "resumed", "--max-iters", "6")
    run_cli(text_file, tmp_path / "resumed", "--max-iters", "12", "--resume")
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "resumed"))
    assert (a["train_loss"], a["val_loss"], a["iters"]) == (b["train_loss"], b["val_loss"], b["iters"])
    import torch
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "resumed"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"caf\xe9 au lait\n" * 50, "not UTF-8"),
        (b"too short\n", "too short for one block"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(PretrainError, match=message) as error:
        run_cli(path, tmp_path / "out", "--max-iters", "2")
    assert str(path) in str(error.value)


def test_bad_input_from_the_command_line_exits_with_the_message(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"na\xefve\n" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "utils.pretrain", "--text", str(path), "--out", str(tmp_path / "o"), *TINY],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr and "latin1.txt" in result.stderr and "Traceback" not in result.stderr


def test_resume_without_a_run_is_a_clear_error(text_file, tmp_path):
    with pytest.raises(PretrainError, match="no run to resume"):
        run_cli(text_file, tmp_path, "--max-iters", "2", "--resume")


def test_torchrun_with_two_cpu_processes(text_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "utils.pretrain", "--text", str(text_file), "--out", str(tmp_path), *TINY, "--max-iters", "6"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iters"] == 6
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
