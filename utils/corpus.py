"""What notebook 02 hands to notebooks 03-06, and how to rebuild it in one call.

02 builds each piece in front of the learner with these same functions:

- the cleaned conversation splits (for fine-tuning in 06),
- the pretraining text of each split, one file per split (any ``--text FILE`` tool reads it),
- the course tokenizer (a ``transformers`` fast tokenizer with the chat special tokens),
- the token ids of each split, memory-mapped (for pretraining in 04).

``ensure_corpus(cfg)`` returns the files, rebuilding them when missing, so a
learner who opens 04 first still gets a working notebook.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from utils import cleaning, data
from utils.io import write_atomically, write_json_atomically
from utils.tokenization import ENDOFTEXT, train_course_tokenizer
from utils.token_files import encode_file

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CorpusFiles:
    """Where one profile's corpus lives (under ``data/processed/<profile>/``, git-ignored)."""

    folder: Path

    @property
    def conversations(self) -> Path:
        return self.folder / "clean_conversations"

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tokenizer"

    @property
    def summary(self) -> Path:
        return self.folder / "corpus.json"

    def text(self, split: str) -> Path:
        return self.folder / f"pretrain_{split}.txt"

    def tokens(self, split: str) -> Path:
        return self.folder / "tokens" / f"{split}.bin"

    def complete(self) -> bool:
        """True when every file a later notebook reads is there (the summary is written last)."""
        return self.summary.exists() and all(self.tokens(s).exists() for s in SPLITS)


def corpus_files(cfg) -> CorpusFiles:
    return CorpusFiles(cfg.paths.processed)


def to_pretraining_text(conversations: list[dict]) -> str:
    """One conversation's turns on consecutive lines; conversations separated by ``<|endoftext|>``.

    Pretraining sees plain dialogue (no role markers): the model learns how people
    talk. Roles and the chat format come in 06. The separator tells the model
    that the next line starts a new, unrelated conversation.
    """
    documents = ["\n".join(m["content"] for m in c["messages"]) for c in conversations]
    return f"\n{ENDOFTEXT}\n".join(documents)


def clean_splits(
    splits: dict[str, list[dict]], config: cleaning.CleaningConfig | None = None
) -> tuple[dict[str, list[dict]], cleaning.CleaningReport]:
    """Clean all splits in one pass, so de-duplication also works *across* splits.

    The pipeline keeps the first copy of a duplicate; the splits go in as train,
    validation, test, so a validation or test conversation that copies a training
    one is dropped rather than flattering the evaluation.
    """
    split_of = {c["id"]: name for name in SPLITS for c in splits[name]}
    everything = [c for name in SPLITS for c in splits[name]]
    cleaned, report = cleaning.clean_conversations(everything, config)
    by_split = {name: [c for c in cleaned if split_of[c["id"]] == name] for name in SPLITS}
    return by_split, report


def write_texts(clean: dict[str, list[dict]], files: CorpusFiles) -> None:
    for split in SPLITS:
        write_atomically(files.text(split), to_pretraining_text(clean[split]))


def encode_splits(tokenizer, files: CorpusFiles) -> dict[str, int]:
    """Token-id file of every split; returns the number of tokens of each."""
    counts = {}
    for split in SPLITS:
        files.tokens(split).parent.mkdir(parents=True, exist_ok=True)
        encode_file(tokenizer, files.text(split), files.tokens(split), tokenizer_name="course")
        counts[split] = json.loads(files.tokens(split).with_suffix(".json").read_text())["n_tokens"]
    return counts


def write_summary(files: CorpusFiles, clean: dict[str, list[dict]], tokens: dict[str, int], vocab_size: int) -> None:
    summary = {
        "conversations": {s: len(clean[s]) for s in SPLITS},
        "tokens": tokens,
        "vocab_size": vocab_size,
        "tokenizer": str(files.tokenizer.name),
    }
    write_json_atomically(files.summary, summary)


def build_corpus(cfg, config: cleaning.CleaningConfig | None = None) -> CorpusFiles:
    """Notebook 02 in one call: clean, write texts, train the tokenizer, encode."""
    files = corpus_files(cfg)
    splits = {name: list(rows) for name, rows in data.load_splits(cfg).items()}
    clean, _ = clean_splits(splits, config)
    data.save_splits(clean, files.conversations)
    write_texts(clean, files)
    train_texts = [m["content"] for c in clean["train"] for m in c["messages"]]
    tokenizer = train_course_tokenizer(train_texts, cfg.profile.tokenizer_vocab_size, files.tokenizer)
    tokens = encode_splits(tokenizer, files)
    write_summary(files, clean, tokens, len(tokenizer))
    return files


def ensure_corpus(cfg) -> CorpusFiles:
    """The corpus of this profile, rebuilt (with a message) when 02 has not been run."""
    files = corpus_files(cfg)
    if not files.complete():
        print(f"No corpus in {files.folder} yet: building it now (what notebook 02 does).")
        build_corpus(cfg)
    return files
