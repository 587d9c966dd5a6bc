"""Pretrain a GPT on any text file, from the command line.

    python -m utils.pretrain --text FILE --tokenizer {char,bpe,gpt2} \\
        --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 \\
        --max-iters 2000 --out DIR [--resume] [--seed N]

    torchrun --nproc_per_node 2 -m utils.pretrain ...   # the same, on 2 processes (GPUs or CPU)

The first 90% of the file (by position) is for training, the last 10% for validation.
Tokenizers: ``char`` (one id per character of the file, saved as ``DIR/char_vocab.json``),
``bpe`` (the course tokenizer trained on the training 90%, saved in ``DIR/tokenizer``),
``gpt2`` (GPT-2's BPE, offline). ``DIR`` gets the checkpoint (``model.safetensors``,
``config.json``, ``training_state.pt``) and ``metrics.json``.

``--resume`` continues the run in DIR up to ``--max-iters`` and ends exactly where one
uninterrupted run would. That is why the cosine schedule ends at ``--lr-decay-iters``
(default 5000), fixed in advance rather than at ``--max-iters``: a run of 1000 steps
extended to 2000 then follows the same learning rates as a run of 2000 steps.
For the classic schedule of a single run, pass ``--lr-decay-iters`` = ``--max-iters``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import numpy as np

from utils import training
from utils.checkpoint import read_config
from utils.io import write_atomically
from utils.model import GPT, GPTConfig

TOKENIZERS = ("char", "bpe", "gpt2")
CHAR_VOCAB_FILE = "char_vocab.json"
BPE_FOLDER = "tokenizer"
TRAIN_FRACTION = 0.9
# The Rust tokenizer's worker threads keep spinning after encoding and slow every training
# step that follows (measured: 5x on 2 cores); our files are small, one thread is enough.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class PretrainError(Exception):
    """Bad input: the message says which file and what to do."""


class CharTokenizer:
    """One id per distinct character, in sorted order: the smallest tokenizer there is."""

    name = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.index[ch] for ch in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps({"chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "CharTokenizer":
        return cls(json.loads(path.read_text(encoding="utf-8"))["chars"])


def read_text(path: Path) -> str:
    """The file's text, or a PretrainError that says what is wrong and what to do."""
    if not path.is_file():
        raise PretrainError(f"{path}: no such file; pass --text a UTF-8 text file.")
    raw = path.read_bytes()
    if not raw.strip():
        raise PretrainError(f"{path}: the file is empty; pass --text a file with some text in it.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise PretrainError(
            f"{path}, line {line} (byte {error.start}): not UTF-8 ({error.reason}); convert it first, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`."
        ) from None


def split_text(text: str) -> tuple[str, str]:
    """90/10 by position: the validation text is the end of the file, never seen in training."""
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def prepare_tokenizer(kind: str, train_text: str, full_text: str, out: Path, vocab_size: int, main: bool):
    """Build (main process) or load the tokenizer; returns (encode, decode, vocab_size, name)."""
    if kind == "char":
        path = out / CHAR_VOCAB_FILE
        if main and not path.exists():
            CharTokenizer.from_text(full_text).save(path)  # every character of the file: none unknown
        return "char", path
    if kind == "bpe":
        folder = out / BPE_FOLDER
        if main and not (folder / "tokenizer.json").exists():
            from utils.tokenization import train_course_tokenizer

            train_course_tokenizer(train_text.splitlines(keepends=True), vocab_size, folder)
        return "bpe", folder
    if kind == "gpt2":
        return "gpt2", None
    raise PretrainError(f"--tokenizer {kind!r}: use one of {', '.join(TOKENIZERS)}.")


def load_tokenizer(kind: str, location: Path | None):
    """(encode, decode, vocab_size) of the prepared tokenizer."""
    if kind == "char":
        tok = CharTokenizer.load(location)
        return tok.encode, tok.decode, len(tok)
    if kind == "bpe":
        from transformers import AutoTokenizer

        from utils.token_files import encode_block

        tok = AutoTokenizer.from_pretrained(str(location))
        return (lambda text: encode_block(tok, text)), tok.decode, len(tok)
    try:
        from utils.tokenization import gpt2_tiktoken

        tok = gpt2_tiktoken()
        return (lambda text: tok.encode(text, allowed_special="all")), tok.decode, tok.n_vocab
    except ImportError:  # tiktoken missing: our from-scratch BPE gives the same ids (slower)
        from utils.tokenization import BPETokenizer

        tok = BPETokenizer.from_gpt2()
        return tok.encode, tok.decode, len(tok)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m utils.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--text", required=True, type=Path, help="a UTF-8 text file (90%% train, 10%% validation)")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="char")
    p.add_argument("--vocab-size", type=int, default=1024, help="vocabulary of --tokenizer bpe")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-iters", type=int, default=2000)
    d = training.TrainConfig()
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    p.add_argument("--lr-decay-iters", type=int, default=5000,
                   help="step where the cosine reaches --min-lr (fixed so that --resume is exact)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", required=True, type=Path, help="folder for the checkpoint and metrics.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --max-iters")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    dist_info, _ = training.setup_distributed(args.device)
    if dist_info.world_size == 1:
        return run(args, dist_info)
    import torch.distributed as dist

    try:
        metrics = run(args, dist_info)
        gc.collect()  # free the DDP wrapper (its communication threads) while the group still exists
        dist.barrier()  # rank 0 may still be writing files: nobody tears the group down before all are done
        return metrics
    finally:
        dist.destroy_process_group()


def run(args, dist_info) -> dict:
    text = read_text(args.text)
    train_text, val_text = split_text(text)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume and not (args.out / "training_state.pt").exists():
        raise PretrainError(f"{args.out}: there is no run to resume here; start one without --resume.")
    kind, location = prepare_tokenizer(args.tokenizer, train_text, text, args.out, args.vocab_size, dist_info.main)
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()  # the main process has written the tokenizer
    encode, decode, vocab_size = load_tokenizer(kind, location)
    train_ids = np.array(encode(train_text), dtype=np.int64)
    val_ids = np.array(encode(val_text), dtype=np.int64)
    needed = args.block_size + 1
    if len(val_ids) < needed or len(train_ids) < needed:
        raise PretrainError(
            f"{args.text}: too short for one block: its 10% validation part has {len(val_ids):,} tokens and its "
            f"90% training part {len(train_ids):,}, but a window needs --block-size + 1 = {needed}; "
            f"use a longer text (at least ~{needed * 10:,} tokens) or a smaller --block-size."
        )

    config = GPTConfig(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout)
    if args.resume:
        saved = read_config(args.out)
        mismatched = {k: (saved["model"].get(k), getattr(config, k)) for k in
                      ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
                      if saved["model"].get(k) != getattr(config, k)}
        if mismatched:
            raise PretrainError(
                f"{args.out / 'config.json'}: the saved run differs from these arguments "
                f"({', '.join(f'{k}: saved {a}, now {b}' for k, (a, b) in mismatched.items())}); "
                "resume with the same model arguments and --tokenizer."
            )
    import torch

    torch.manual_seed(args.seed)
    model = GPT(config)
    cfg = training.TrainConfig(
        batch_size=args.batch_size, block_size=args.block_size, grad_accum_steps=args.grad_accum,
        max_iters=args.max_iters, learning_rate=args.learning_rate, min_lr=args.min_lr,
        warmup_iters=args.warmup_iters, lr_decay_iters=args.lr_decay_iters, weight_decay=args.weight_decay,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters, device=args.device, dtype=args.dtype,
        compile=args.compile, seed=args.seed, progress=not args.no_progress,
    )
    metrics = training.train(
        model, train_ids, val_ids, cfg, args.out, resume=args.resume, decode=decode,
        tokenizer_name=f"{kind}:{location}" if location else kind, sample_prompt=val_ids[:1].tolist(),
    )
    if dist_info.main:
        tps, mfu = metrics["tokens_per_second"] or 0.0, metrics["mfu"]
        print(
            f"\nDone: {metrics['iters']} steps, {metrics['parameters']:,} parameters, "
            f"{args.tokenizer} vocabulary {vocab_size:,}, {metrics['world_size']} process(es) on {metrics['device']} "
            f"({metrics['dtype']})\n"
            f"  train loss {metrics['train_loss']:.4f}   val loss {metrics['val_loss']:.4f}\n"
            f"  {tps:,.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu is not None else ", MFU n/a on this device")
            + f", {metrics['elapsed_seconds']:.1f} s\n  checkpoint and metrics.json in {args.out}"
        )
    return metrics


if __name__ == "__main__":
    try:
        main()
    except PretrainError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
