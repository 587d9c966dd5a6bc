"""Token-id files for pretraining: a flat binary array of ids plus a small JSON card.

``train.bin`` holds the ids back to back (uint16 when the vocabulary fits in
65,536 ids, else uint32), so notebook 04 can ``np.memmap`` a corpus bigger than
memory and slice random windows out of it. ``train.json`` says how to read it:
dtype, number of tokens, vocabulary size, which tokenizer and which text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from utils.io import write_atomically

UINT16_LIMIT = 2**16

# A "\n" with a non-space character on each side. Cutting the text right after such
# a newline gives exactly the same tokens as encoding the whole text at once:
# GPT-2's split pattern never joins "\n" with its neighbours there. Cutting inside a
# run of blank lines or spaces would not ("\n\n" is a token of its own).
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
LINES_PER_TEXT = 64


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id of the vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= UINT16_LIMIT else np.uint32)


def metadata_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def write_token_file(
    ids: Iterable[int] | np.ndarray,
    path: str | os.PathLike,
    vocab_size: int,
    tokenizer_name: str,
    source: str,
) -> Path:
    """Write ``ids`` to ``path`` (``.bin``) and its metadata to ``path.with_suffix('.json')``."""
    path = Path(path)
    if path.suffix != ".bin":
        raise ValueError(f"{path}: token files end in .bin (the metadata goes to the .json beside it).")
    dtype = token_dtype(vocab_size)
    ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"{path}: ids must be a flat sequence, got shape {ids.shape}.")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"{path}: token id {bad} is outside the vocabulary 0..{vocab_size - 1}.")

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "dtype": dtype.name,
        "n_tokens": int(ids.size),
        "vocab_size": int(vocab_size),
        "tokenizer": tokenizer_name,
        "source": str(source),
    }
    write_atomically(path, ids.astype(dtype).tobytes())  # readers never see half a file
    write_atomically(metadata_path(path), json.dumps(metadata, indent=2))
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON card of a token file, checked against the file on disk."""
    path, meta_path = Path(path), metadata_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: encode the text first (utils.token_files.encode_file).")
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} is missing, so {path.name} cannot be read safely (dtype and length unknown): "
            "write token files with utils.token_files.write_token_file."
        )
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path}, line {error.lineno}: not valid JSON ({error.msg}); re-encode the text.") from None
    for field in ("dtype", "n_tokens", "vocab_size", "tokenizer", "source"):
        if field not in metadata:
            raise ValueError(f"{meta_path}: field {field!r} is missing; re-encode the text.")
    if metadata["dtype"] not in ("uint16", "uint32"):
        raise ValueError(f"{meta_path}: field 'dtype' is {metadata['dtype']!r}, expected 'uint16' or 'uint32'.")
    expected = metadata["n_tokens"] * np.dtype(metadata["dtype"]).itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{path} has {actual:,} bytes but {meta_path.name} (field 'n_tokens' = {metadata['n_tokens']:,}, "
            f"{metadata['dtype']}) says {expected:,}: the files do not belong together; re-encode the text."
        )
    return metadata


def read_token_file(path: str | os.PathLike) -> np.ndarray:
    """The ids of a token file, memory-mapped read-only (nothing is loaded until sliced)."""
    metadata = read_metadata(path)
    if metadata["n_tokens"] == 0:
        return np.zeros(0, dtype=metadata["dtype"])  # an empty file cannot be memory-mapped
    return np.memmap(path, dtype=metadata["dtype"], mode="r", shape=(metadata["n_tokens"],))


def read_blocks(text_path: Path, block_chars: int) -> Iterator[str]:
    """Stream a text file in blocks of about ``block_chars``, each ending at a safe newline."""
    carry = ""
    # newline="" keeps "\r\n" as it is in the file: the tokens must see the real text.
    with open(text_path, encoding="utf-8", newline="") as f:
        while data := f.read(block_chars):
            pieces = SAFE_CUT.split(carry + data)
            carry = pieces.pop()  # the last piece may continue in the next read
            if pieces:
                yield "".join(pieces)
    if carry:
        yield carry


def encode_block(tokenizer, block: str) -> list[int]:
    """Encode one block: batched over its lines with a fast HF tokenizer, else ``tokenizer.encode``."""
    if getattr(tokenizer, "is_fast", False):
        # A batch of texts of ~64 lines each: the Rust tokenizer encodes them in parallel, and
        # texts of that size keep the per-text overhead small.
        lines = SAFE_CUT.split(block)
        texts = ["".join(lines[i : i + LINES_PER_TEXT]) for i in range(0, len(lines), LINES_PER_TEXT)]
        batches = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [token_id for ids in batches for token_id in ids]
    return list(tokenizer.encode(block))


def vocabulary_size(tokenizer) -> int:
    """``len(tokenizer)`` for transformers and BPETokenizer (added tokens included), ``n_vocab`` for tiktoken."""
    if hasattr(tokenizer, "n_vocab"):
        return tokenizer.n_vocab
    return len(tokenizer)


def encode_file(
    tokenizer,
    text_path: str | os.PathLike,
    out_path: str | os.PathLike,
    tokenizer_name: str | None = None,
    vocab_size: int | None = None,
    block_chars: int = 1_000_000,
) -> Path:
    """Encode a UTF-8 text file into a token file, reading it a block at a time.

    Blocks end at safe newlines (see ``SAFE_CUT``), so the ids are exactly those of
    encoding the whole file at once. Works with any tokenizer that has ``.encode``.
    """
    text_path = Path(text_path)
    if not text_path.exists():
        raise FileNotFoundError(f"{text_path} does not exist: nothing to encode.")
    vocab_size = vocab_size or vocabulary_size(tokenizer)
    # int64 while encoding, so that write_token_file can catch an id the vocabulary cannot hold.
    blocks = [np.asarray(encode_block(tokenizer, block), dtype=np.int64) for block in read_blocks(text_path, block_chars)]
    ids = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    name = tokenizer_name or getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    return write_token_file(ids, out_path, vocab_size, tokenizer_name=name, source=str(text_path))
