"""Tests of utils.token_files: write/read round trip, dtypes, errors, streaming encoding."""

import json

import numpy as np
import pytest

from utils.token_files import encode_file, read_token_file, token_dtype, write_token_file
from utils.tokenization import BPETokenizer, train_course_tokenizer

TEXT = "".join(
    f"line {i}: hello there, how's it going?\n" + ("\n\n" if i % 7 == 0 else "") + ("  indented\r\n" if i % 5 == 0 else "")
    for i in range(300)
)


def test_round_trip_and_metadata(tmp_path):
    ids = [0, 1, 2, 50_000, 65_535]
    path = write_token_file(ids, tmp_path / "train.bin", vocab_size=65_536, tokenizer_name="toy", source="unit test")
    tokens = read_token_file(path)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    assert tokens.tolist() == ids
    metadata = json.loads((tmp_path / "train.json").read_text())
    assert metadata == {"dtype": "uint16", "n_tokens": 5, "vocab_size": 65_536, "tokenizer": "toy", "source": "unit test"}


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype(50_257) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    path = write_token_file([70_000, 3], tmp_path / "big.bin", vocab_size=100_000, tokenizer_name="t", source="s")
    assert read_token_file(path).dtype == np.uint32 and read_token_file(path).tolist() == [70_000, 3]
    assert read_token_file(write_token_file([], tmp_path / "empty.bin", 10, "t", "s")).size == 0


def test_bad_input_and_metadata_errors(tmp_path):
    with pytest.raises(ValueError, match="300"):
        write_token_file([1, 300], tmp_path / "a.bin", vocab_size=256, tokenizer_name="t", source="s")
    with pytest.raises(ValueError, match=r"\.bin"):
        write_token_file([1], tmp_path / "a.npy", vocab_size=256, tokenizer_name="t", source="s")

    path = write_token_file([1, 2, 3], tmp_path / "a.bin", vocab_size=256, tokenizer_name="t", source="s")
    meta = tmp_path / "a.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "n_tokens": 4}))
    with pytest.raises(ValueError, match="n_tokens"):
        read_token_file(path)
    meta.write_text(json.dumps({"dtype": "uint16"}))
    with pytest.raises(ValueError, match="'n_tokens' is missing"):
        read_token_file(path)
    meta.write_text("{not json")
    with pytest.raises(ValueError, match="line 1"):
        read_token_file(path)
    meta.unlink()
    with pytest.raises(FileNotFoundError, match="a.json"):
        read_token_file(path)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_token_file(tmp_path / "missing.bin")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_token_file(range(100), tmp_path / "t.bin", vocab_size=256, tokenizer_name="t", source="s")
    write_token_file(range(50), tmp_path / "t.bin", vocab_size=256, tokenizer_name="t", source="s")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.json"]
    assert read_token_file(tmp_path / "t.bin").tolist() == list(range(50))


def test_encode_file_streams_exactly_like_one_encode(tmp_path):
    text_path = tmp_path / "corpus.txt"
    text_path.write_bytes(TEXT.encode("utf-8"))  # bytes: keep the "\r\n" as written
    tokenizer = BPETokenizer.train(TEXT, vocab_size=300)
    out = encode_file(tokenizer, text_path, tmp_path / "corpus.bin", tokenizer_name="bpe300", block_chars=500)
    assert read_token_file(out).tolist() == tokenizer.encode(TEXT)
    assert tokenizer.decode(read_token_file(out).tolist()) == TEXT
    assert json.loads((tmp_path / "corpus.json").read_text())["tokenizer"] == "bpe300"


def test_encode_file_with_a_fast_hf_tokenizer(tmp_path):
    text_path = tmp_path / "corpus.txt"
    text_path.write_bytes(TEXT.encode("utf-8"))
    tokenizer = train_course_tokenizer(TEXT.splitlines(), vocab_size=320, out_dir=tmp_path / "tok")
    out = encode_file(tokenizer, text_path, tmp_path / "corpus.bin", block_chars=5000)  # > 64 lines a block
    assert read_token_file(out).tolist() == tokenizer.encode(TEXT)
    assert json.loads((tmp_path / "corpus.json").read_text())["vocab_size"] == len(tokenizer)
