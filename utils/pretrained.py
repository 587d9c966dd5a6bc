"""The profile's pretrained model: its shape, its training budget, and where 04 leaves it.

Notebook 04 trains it with these configs; 05 and 06 call ``ensure_pretrained(cfg)``,
which trains the same model (what 04 does, without the lesson) only when the
checkpoint is missing, so every notebook also works on its own.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from utils import corpus, training
from utils.checkpoint import load_checkpoint
from utils.model import GPT, GPTConfig
from utils.token_files import read_token_file
from utils.tokenization import ENDOFTEXT


def model_config(profile, vocab_size: int) -> GPTConfig:
    """The GPT shape a profile trains (03 shows its size, 04 trains it)."""
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=profile.block_size,
        n_layer=profile.n_layer,
        n_head=profile.n_head,
        n_embd=profile.n_embd,
        dropout=0.0,
    )


def train_config(profile, seed: int) -> training.TrainConfig:
    """The profile's pretraining budget as a TrainConfig (warm-up, then cosine to a tenth of the peak)."""
    return training.TrainConfig(
        batch_size=profile.batch_size,
        block_size=profile.block_size,
        grad_accum_steps=profile.grad_accum_steps,
        max_iters=profile.max_iters,
        learning_rate=profile.learning_rate,
        min_lr=profile.learning_rate / 10,
        warmup_iters=profile.warmup_iters,
        eval_interval=profile.eval_interval,
        sample_interval=profile.eval_interval,
        eval_iters=profile.eval_iters,
        log_interval=max(1, profile.max_iters // 100),
        sample_tokens=60,
        seed=seed,
        progress=profile.progress,
    )


def checkpoint_dir(cfg) -> Path:
    return cfg.paths.checkpoints / "pretrained"


def pretrain(cfg, callback=None) -> dict:
    """Train the profile's GPT on the corpus from 02 and save it (with its tokenizer) for 05 and 06."""
    from transformers import AutoTokenizer

    files = corpus.ensure_corpus(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(files.tokenizer))
    train_ids, val_ids = read_token_file(files.tokens("train")), read_token_file(files.tokens("validation"))
    torch.manual_seed(cfg.seed)
    model = GPT(model_config(cfg.profile, len(tokenizer)))
    out = checkpoint_dir(cfg)
    start = time.perf_counter()
    metrics = training.train(
        model, train_ids, val_ids, train_config(cfg.profile, cfg.seed), out,
        decode=tokenizer.decode, callback=callback, tokenizer_name="course",
        sample_prompt=[tokenizer.convert_tokens_to_ids(ENDOFTEXT)],
    )
    metrics["wall_seconds"] = time.perf_counter() - start
    tokenizer.save_pretrained(str(out / "tokenizer"))  # the model travels with its tokenizer
    return metrics


def ensure_pretrained(cfg, device: str = "cpu"):
    """``(model, tokenizer)`` of the profile's checkpoint, training it first (with a message) if 04 has not run."""
    from transformers import AutoTokenizer

    out = checkpoint_dir(cfg)
    if not (out / "tokenizer").exists():
        print(f"No pretrained checkpoint in {out} yet: training it now (what notebook 04 does).")
        pretrain(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    return load_checkpoint(out, tokenizer=tokenizer, device=device), tokenizer
