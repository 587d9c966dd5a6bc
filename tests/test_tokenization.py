"""Tests of utils.tokenization: our BPE, GPT-2 exactness, the course tokenizer."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from utils.tokenization import (
    CHAT_TOKENS,
    ENDOFTEXT,
    GPT2_VOCAB_SIZE,
    SPECIAL_TOKENS,
    BPETokenizer,
    bytes_per_token,
    gpt2_bytes_to_unicode,
    gpt2_reference_tokenizer,
    gpt2_tiktoken,
    train_course_tokenizer,
)

TRICKY_TEXTS = [
    "Hello world!",
    "hello   world \n\n\n  indented\n",
    "windows\r\nline\r\nendings\r\n",
    "tabs\tand\t\tmore\ttabs",
    "trailing spaces   ",
    "   leading spaces",
    " ",
    "",
    "\n",
    "👍🏽 thumbs up, family 👨‍👩‍👧 and 🏳️‍🌈",
    "日本語のテキストと中文",
    "Καλημέρα κόσμε, αβγ",
    "numbers 1234567 and 3.14 and 1,000,000 and -42",
    "I'm sure you'll see they've gone, it's what we'd do, isn't it? DON'T",
    "a" * 1000,
    "ha" * 300,
    "def square(x):\n    return x ** 2  # comment\n\nprint(square(12))",
    "e-mail: someone@example.com, url https://example.org/a?b=c&d=e",
    "mixed: café naïve résumé Straße İstanbul",
    "zero\u200bwidth and non\u00a0breaking",
    "hello<|endoftext|>world <|endoftext|> again",
    "<|endoftext|>",
]

CHAT_TEXT = "\n".join(
    [
        "hey! how's it going?",
        "pretty good, just got back from the gym lol",
        "nice!! what did you do there? I'm thinking of starting running again",
        "mostly weights, some cardio. you should totally try it :)",
        "maybe tomorrow, it's raining today and I don't like running in the rain",
    ]
    * 40
)


@pytest.fixture(scope="module")
def gpt2_ours():
    return BPETokenizer.from_gpt2()


@pytest.fixture(scope="module")
def chat_bpe():
    return BPETokenizer.train(CHAT_TEXT, vocab_size=300)


# ---------------------------------------------------------------- our BPE
def test_toy_merges_are_the_textbook_ones():
    # "aaabdaaabac": "aa" occurs 4 times -> first merge; then "ab" and ("aa","a") tie
    # at 2: the smaller pair (97, 98) wins; then ("aa", "ab") -> "aaab".
    tokenizer = BPETokenizer.train("aaabdaaabac", vocab_size=259)
    assert tokenizer.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert tokenizer.vocab[258] == b"aaab"
    assert tokenizer.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_training_gives_exactly_vocab_size(chat_bpe):
    assert len(chat_bpe) == 300 and len(chat_bpe.merges) == 300 - 256
    with_special = BPETokenizer.train(CHAT_TEXT, vocab_size=300, special_tokens=SPECIAL_TOKENS)
    assert len(with_special) == 300
    assert with_special.special_tokens[ENDOFTEXT] == 300 - len(SPECIAL_TOKENS)


def test_merges_never_cross_chunks():
    tokenizer = BPETokenizer.train("ab ab ab ab cd cd", vocab_size=260)
    learned = set(tokenizer.vocab.values())
    assert b" ab" in learned and b"b " not in learned and b"b c" not in learned


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip_any_unicode(chat_bpe, text):
    assert chat_bpe.decode(chat_bpe.encode(text)) == text


def test_special_tokens_are_single_ids_and_optional():
    tokenizer = BPETokenizer.train(CHAT_TEXT, vocab_size=300, special_tokens=SPECIAL_TOKENS)
    text = "<|user|>hi<|end|><|assistant|>hello<|end|><|endoftext|>"
    ids = tokenizer.encode(text)
    for token in ("<|user|>", "<|end|>", "<|assistant|>", ENDOFTEXT):
        assert tokenizer.special_tokens[token] in ids
    assert tokenizer.decode(ids) == text
    plain = tokenizer.encode(text, allow_special=False)  # untrusted text: no special ids
    assert not set(plain) & set(tokenizer.special_tokens.values())
    assert tokenizer.decode(plain) == text


def test_decode_takes_what_generate_returns(chat_bpe):
    import numpy as np
    import torch

    ids = chat_bpe.encode("hello there, friend")
    assert max(ids) >= 256  # merged tokens: the ids a tensor lookup used to miss
    out = torch.tensor([ids])  # (1, T), as GPT.generate returns
    for form in (ids, out[0], out, np.array(ids), tuple(ids)):
        assert chat_bpe.decode(form) == "hello there, friend"
    with pytest.raises(ValueError, match="one row at a time"):
        chat_bpe.decode(torch.tensor([ids, ids]))


def test_deterministic_and_save_load(tmp_path, chat_bpe):
    again = BPETokenizer.train(CHAT_TEXT, vocab_size=300)
    assert again.merges == chat_bpe.merges
    loaded = BPETokenizer.load(chat_bpe.save(tmp_path / "bpe.json"))
    assert loaded.merges == chat_bpe.merges
    assert loaded.encode(CHAT_TEXT) == chat_bpe.encode(CHAT_TEXT)


def test_clear_errors(chat_bpe, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        BPETokenizer.train("abc", vocab_size=200)
    with pytest.raises(ValueError, match="only allows"):
        BPETokenizer.train("abc", vocab_size=300)
    with pytest.raises(ValueError, match="12345"):
        chat_bpe.decode([12345])
    (tmp_path / "other.json").write_text(json.dumps({"merges": []}))
    with pytest.raises(ValueError, match="other.json"):
        BPETokenizer.load(tmp_path / "other.json")


def real_chat_text(n_chars: int) -> str:
    """Real messy chat text from the embedded chitchat-dataset."""
    import chitchat_dataset

    conversations = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text("utf-8"))
    messages = (m["text"] for c in conversations.values() for group in c["messages"] for m in group)
    text = ""
    while len(text) < n_chars:
        text += next(messages) + "\n"
    return text


def test_matches_hf_tokenizers_training():
    """Same algorithm, same data: HF tokenizers learns (almost) the same vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = real_chat_text(120_000)
    train_text, held_out = text[:100_000], text[100_000:].splitlines()
    ours = BPETokenizer.train(train_text, vocab_size=400)
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    hf.train_from_iterator([train_text], trainer)
    assert hf.get_vocab_size() == len(ours) == 400

    char_to_byte = {c: b for b, c in gpt2_bytes_to_unicode().items()}
    hf_tokens = {bytes(char_to_byte[c] for c in token) for token in hf.get_vocab()}
    assert len(hf_tokens & set(ours.vocab.values())) >= 0.95 * 400  # tolerance: ties may break differently

    ours_bpt = bytes_per_token(ours.encode, held_out)
    hf_bpt = bytes_per_token(lambda t: hf.encode(t).ids, held_out)
    assert abs(ours_bpt - hf_bpt) / hf_bpt < 0.05  # tolerance: 5 %


# ---------------------------------------------------------------- GPT-2
def test_gpt2_table_and_sizes(gpt2_ours):
    table = gpt2_bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ"
    assert len(gpt2_ours) == GPT2_VOCAB_SIZE and gpt2_ours.special_tokens[ENDOFTEXT] == 50256
    assert gpt2_ours.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids


def test_gpt2_exact_against_transformers_and_tiktoken(gpt2_ours):
    reference, tiktoken_gpt2 = gpt2_reference_tokenizer(), gpt2_tiktoken()
    for text in TRICKY_TEXTS + [CHAT_TEXT]:
        ours = gpt2_ours.encode(text)
        assert ours == reference(text)["input_ids"], text
        assert ours == tiktoken_gpt2.encode(text, allowed_special="all"), text
        assert gpt2_ours.decode(ours) == text
        assert gpt2_ours.encode(text, allow_special=False) == tiktoken_gpt2.encode_ordinary(text)


# ---------------------------------------------------------------- course tokenizer
def test_course_tokenizer_saves_and_reloads(tmp_path):
    texts = CHAT_TEXT.splitlines()
    trained = train_course_tokenizer(texts, vocab_size=320, out_dir=tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tokenizer) == len(trained) <= 320
    assert tokenizer.eos_token == ENDOFTEXT and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

    for token in SPECIAL_TOKENS:
        assert len(tokenizer.encode(token)) == 1
    conversation = "<|system|>be kind<|end|><|user|>hey 👍🏽<|end|><|assistant|>hi!<|end|><|endoftext|>"
    ids = tokenizer.encode(conversation)
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [2, 5, 3, 5, 4, 5, 0]
    assert set(CHAT_TOKENS) <= set(tokenizer.all_special_tokens)
    for text in TRICKY_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert Path(tmp_path / "tok" / "tokenizer.json").exists()


def test_bytes_per_token():
    assert bytes_per_token(lambda t: list(t.encode("utf-8")), ["abc", "é"]) == 1.0
    with pytest.raises(ValueError):
        bytes_per_token(lambda t: [], [""])
