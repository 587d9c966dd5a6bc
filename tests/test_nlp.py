"""Tests of utils.nlp: offline Punkt tables, NLTK and spaCy tokenization. No network."""

import nltk
import pytest

from utils import nlp

CHAT = "Mr. Smith said hi at 5 p.m. yesterday. I can't believe it :) see https://example.com/a?b=1 lol. Dr. Who? Yes!"


@pytest.fixture(scope="module")
def nltk_dir(tmp_path_factory):
    return nlp.ensure_punkt(tmp_path_factory.mktemp("nltk_data"))


def test_ensure_punkt_writes_tables_and_is_idempotent(nltk_dir):
    english = nltk_dir / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in english.iterdir()) == sorted(nlp.PUNKT_FILES)
    assert nltk.data.path[0] == str(nltk_dir)
    mtimes = {p.name: p.stat().st_mtime_ns for p in english.iterdir()}
    assert nlp.ensure_punkt(nltk_dir) == nltk_dir
    assert {p.name: p.stat().st_mtime_ns for p in english.iterdir()} == mtimes  # nothing rewritten
    assert nltk.data.path.count(str(nltk_dir)) == 1
    first = (english / "collocations.tab").read_text().splitlines()[0]
    assert len(first.split("\t")) == 2
    word, count = (english / "ortho_context.tab").read_text().splitlines()[0].split("\t")
    assert count.isdigit()


def test_sent_tokenize_offline(nltk_dir):
    assert nltk.sent_tokenize(CHAT) == [
        "Mr. Smith said hi at 5 p.m. yesterday.",
        "I can't believe it :) see https://example.com/a?b=1 lol.",
        "Dr. Who?",
        "Yes!",
    ]


def test_word_tokenize_offline(nltk_dir):
    tokens = nltk.word_tokenize(CHAT)
    assert tokens[:7] == ["Mr.", "Smith", "said", "hi", "at", "5", "p.m."]
    assert "ca" in tokens and "n't" in tokens  # Treebank splits contractions
    assert ":" in tokens and ")" in tokens  # ... and emoticons
    assert "https" in tokens  # ... and URLs


def test_tweet_tokenizer_keeps_emoticons_and_urls():
    tokens = nltk.tokenize.TweetTokenizer().tokenize(CHAT)
    assert ":)" in tokens and "https://example.com/a?b=1" in tokens and "can't" in tokens


def test_train_punkt_learns_from_our_text():
    places = ["the library", "class", "lunch", "the gym", "church", "work", "the park", "home"]
    text = " ".join(
        f"I saw Prof. Jones at {places[i % 8]} on day {i}. It was fun and the weather was nice in {places[(i + 3) % 8]}."
        for i in range(60)
    )
    tokenizer = nlp.train_punkt(text)
    assert "prof" in tokenizer._params.abbrev_types
    assert tokenizer.tokenize("I saw Prof. Jones at lunch. It was fun.") == [
        "I saw Prof. Jones at lunch.", "It was fun."]


def test_spacy_pipeline_and_compare(nltk_dir):
    pipe = nlp.spacy_pipeline(verbose=False)
    doc = pipe("I can't believe it :) see https://example.com ok")
    words = [t.text for t in doc]
    assert "ca" in words and "n't" in words and ":)" in words and "https://example.com" in words
    table = nlp.compare_tokenizers(CHAT, nltk_dir)
    assert list(table.index) == ["str.split", "nltk.word_tokenize", "nltk TweetTokenizer", "spaCy"]
    assert table.loc["str.split", "n_tokens"] == len(CHAT.split())
