"""02's hand-over to 03-06: clean splits without cross-split leaks, texts, tokenizer, token ids."""

import dataclasses

import numpy as np
import pytest

from utils import config, corpus
from utils.token_files import read_token_file
from utils.tokenization import ENDOFTEXT


def conversation(cid, *turns):
    roles = ["user", "assistant"] * len(turns)
    return {"id": cid, "source": "test", "license": "MIT",
            "messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]}


def test_pretraining_text_puts_turns_on_lines_and_separates_conversations():
    text = corpus.to_pretraining_text([conversation("a", "hi", "hello"), conversation("b", "yo", "hey")])
    assert text == f"hi\nhello\n{ENDOFTEXT}\nyo\nhey"


def test_a_validation_copy_of_a_training_conversation_is_dropped_not_leaked():
    shared = ("what are you doing this weekend", "going hiking with my dog in the mountains")
    splits = {
        "train": [conversation("t1", *shared), conversation("t2", "do you like tea", "only green tea")],
        "validation": [conversation("v1", *shared), conversation("v2", "any plans", "none yet, you?")],
        "test": [conversation("x1", "is it raining", "yes, all day")],
    }
    clean, report = corpus.clean_splits(splits)
    assert [c["id"] for c in clean["train"]] == ["t1", "t2"]
    assert [c["id"] for c in clean["validation"]] == ["v2"]
    assert [c["id"] for c in clean["test"]] == ["x1"]
    dropped = {row["id"]: row["duplicate_of"] for row in report.dropped}
    assert dropped == {"v1": "t1"}


@pytest.fixture
def tiny_cfg(tmp_path):
    profile = dataclasses.replace(config.PROFILES["ci"], max_conversations=120, tokenizer_vocab_size=300)
    return config.CourseConfig(profile=profile, device="cpu", online=False, seed=1,
                               paths=config.Paths(tmp_path, "ci").make())


def test_build_corpus_writes_everything_later_notebooks_read(tiny_cfg, capsys):
    files = corpus.ensure_corpus(tiny_cfg)
    assert "building it now" in capsys.readouterr().out
    assert files.complete()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(files.tokenizer)
    assert len(tokenizer) == 300
    for split in corpus.SPLITS:
        ids = read_token_file(files.tokens(split))
        text = files.text(split).read_text(encoding="utf-8")
        assert len(ids) > 0 and int(np.max(ids)) < len(tokenizer)
        assert tokenizer.decode(ids[:200].tolist()) == tokenizer.decode(tokenizer.encode(text)[:200])
    # complete: a second call does not rebuild
    mtime = files.summary.stat().st_mtime_ns
    corpus.ensure_corpus(tiny_cfg)
    assert "building" not in capsys.readouterr().out and files.summary.stat().st_mtime_ns == mtime
