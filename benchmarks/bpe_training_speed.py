"""How fast is our from-scratch BPE training next to Hugging Face ``tokenizers`` (Rust)?

    python benchmarks/bpe_training_speed.py [--chars 1000000] [--vocab-size 512]

Both learn a byte-level BPE with GPT-2's split pattern on the same real chat text
(the embedded ``chitchat-dataset``); the script prints both times and the ratio.
Our goal: at most 60x slower than Rust while staying readable Python.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from utils.token_files import SAFE_CUT
from utils.tokenization import BPETokenizer, bytes_per_token


def chitchat_text(n_chars: int) -> str:
    """The first ``n_chars`` characters of the embedded chats, one message a line."""
    import chitchat_dataset

    path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    conversations = json.loads(path.read_text(encoding="utf-8"))
    lines, total = [], 0
    for conversation in conversations.values():
        for group in conversation["messages"]:
            for message in group:
                lines.append(message["text"])
                total += len(message["text"]) + 1
                if total >= n_chars:
                    return "\n".join(lines)[:n_chars]
    return "\n".join(lines)


def train_hf(text: str, vocab_size: int):
    """The same recipe in HF tokenizers: 256 bytes, GPT-2's regex, no special tokens.

    HF gets the text as batches of 1,000 lines (its fastest input: it pre-tokenizes
    them in parallel), cut only at newlines where GPT-2's chunks cannot change.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = SAFE_CUT.split(text)
    batches = ["".join(lines[i : i + 1000]) for i in range(0, len(lines), 1000)]

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(batches, trainer)
    return tokenizer


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=1_000_000, help="characters of chat text to train on")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs for each")
    args = parser.parse_args(argv)

    text = chitchat_text(args.chars)
    ours_s = best_time(lambda: BPETokenizer.train(text, args.vocab_size), args.repeats)
    hf_s = best_time(lambda: train_hf(text, args.vocab_size), args.repeats)
    ours, hf = BPETokenizer.train(text, args.vocab_size), train_hf(text, args.vocab_size)
    sample = text.splitlines()[-2000:]

    print(f"text:            {len(text):,} characters, {len(text.encode('utf-8')):,} bytes")
    print(f"vocab size:      ours {len(ours)}, HF {hf.get_vocab_size()}")
    print(f"bytes/token:     ours {bytes_per_token(ours.encode, sample):.3f}, "
          f"HF {bytes_per_token(lambda t: hf.encode(t).ids, sample):.3f}")
    print(f"ours (Python):   {ours_s:.3f} s")
    print(f"HF tokenizers:   {hf_s:.3f} s")
    print(f"ratio:           {ours_s / hf_s:.1f}x  (goal: <= 60x)")


if __name__ == "__main__":
    main()
