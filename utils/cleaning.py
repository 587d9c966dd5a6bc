"""Cleaning chat text: small named steps, PII masking, de-duplication, quality filters.

Every text step is a pure function ``str -> str`` so that a notebook can show it
on one message, a test can pin it down, and ``clean_conversations`` can chain
them over a whole corpus while counting what each one changed. Nothing is ever
dropped silently: every removed conversation gets a row with its reason.

Conversations follow the course schema (``utils.data``)::

    {"id": str, "source": str, "license": str,
     "messages": [{"role": "user" | "assistant" | "system", "content": str}, ...]}
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable

import ftfy

__all__ = [
    "fix_unicode",
    "remove_control_chars",
    "normalize_whitespace",
    "lowercase",
    "correct_spelling",
    "spelling_corrections",
    "spell_checker",
    "CHAT_ALLOWLIST",
    "mask_pii",
    "find_pii",
    "PII_PLACEHOLDERS",
    "luhn_valid",
    "conversation_text",
    "exact_duplicates",
    "near_duplicates",
    "too_few_turns",
    "has_empty_turn",
    "mostly_non_letters",
    "has_overlong_turn",
    "CleaningConfig",
    "CleaningReport",
    "clean_conversations",
]


# --------------------------------------------------------------------------------------
# 1. Unicode repair
# --------------------------------------------------------------------------------------


def fix_unicode(text: str, uncurl_quotes: bool = True) -> str:
    """Repair mojibake and odd encodings with ftfy, then normalise to NFC.

    Why: text that went through the wrong codec ("donâ€™t" for "don’t") turns
    one character into three rare ones; a tokenizer then wastes vocabulary on
    garbage and the model learns to produce it.

    Curly quotes: by default we *do* straighten them (’ -> ', “ -> "). In chat
    data they are an accident of the keyboard (phones type ’, laptops type '),
    not a choice of the writer, and a small model should not learn "don’t"
    and "don't" as two words. Pass ``uncurl_quotes=False`` to keep them
    (GPT-2's byte-level BPE keeps them; for edited prose they carry meaning).

    ASCII text without "&" or "\\r" cannot contain mojibake, HTML entities or
    Windows line breaks, so it skips ftfy entirely (most chat messages do).
    """
    if text.isascii() and "&" not in text and "\r" not in text:
        return text
    return ftfy.fix_text(text, uncurl_quotes=uncurl_quotes, normalization="NFC")


# --------------------------------------------------------------------------------------
# 2. Control and invisible characters
# --------------------------------------------------------------------------------------

_ZWJ, _ZWNJ = "\u200d", "\u200c"
_TAGS = "\U000e0020-\U000e007f"  # tag characters: only meaningful inside flag emoji like 🏴󠁧󠁢󠁳󠁣󠁴󠁿


def _invisible_class() -> str:
    """A regex class of every control (Cc), format (Cf) and surrogate (Cs) character,
    minus \\n and \\t, minus the joiners and tags, which need context (see below)."""
    keep = {"\n", "\t", "\r", _ZWJ, _ZWNJ}
    chars = []
    for cp in range(0x110000):
        if 0xE0020 <= cp <= 0xE007F:
            continue
        ch = chr(cp)
        if ch not in keep and unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            chars.append(cp)
    # compress into ranges so the regex stays small
    parts, start, prev = [], None, None
    for cp in chars + [None]:
        if start is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
        start = prev = cp
    return "[" + "".join(parts) + "]"


_INVISIBLE = re.compile(_invisible_class())
# A joiner (ZWJ/ZWNJ) is kept only *between* two visible non-ASCII characters: that is
# where it does a job (👩‍💻 = 👩 + ZWJ + 💻; Persian and Indic scripts use ZWNJ/ZWJ
# inside words). Next to a space, an ASCII character or the end of the text it joins
# nothing and is junk from copy-paste.
_STRAY_JOINER = re.compile(
    r"(?<![^\x00-\x7f\s])[\u200c\u200d]|[\u200c\u200d](?![^\x00-\x7f\s])"
)
# Tag characters survive only right after the black flag 🏴 or another tag character.
_STRAY_TAG = re.compile(rf"(?<![\U0001f3f4{_TAGS}])[{_TAGS}]")
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x85]")


def remove_control_chars(text: str) -> str:
    """Delete invisible control and format characters; keep \\n, \\t and emoji intact.

    Why: NUL bytes, byte-order marks (U+FEFF), zero-width spaces (U+200B),
    direction marks (U+200E/F) and soft hyphens (U+00AD) are invisible to the
    reader but are real characters to a tokenizer: "hello" and "hel\\u200blo"
    become different tokens, and a model trained on them learns to emit them.

    Careful with U+200D (zero-width joiner): inside an emoji sequence it is what
    makes 👨‍👩‍👧 one family instead of three people, so it is kept between two
    visible non-ASCII characters and removed elsewhere. \\r\\n, \\r and the
    Unicode line/paragraph separators become \\n.
    """
    if text.isascii():
        if text.isprintable():
            return text
        text = _LINE_BREAKS.sub("\n", text)
        return _INVISIBLE.sub("", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    text = _STRAY_JOINER.sub("", text)
    return _STRAY_TAG.sub("", text)


# --------------------------------------------------------------------------------------
# 3. Whitespace and case
# --------------------------------------------------------------------------------------

_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except \n (tabs, NBSP, thin spaces, ...)
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs (and exotic spaces such as NBSP) into one space,
    strip each line's ends and the text's ends, and keep at most one blank line.

    Why: "ok  cool" and "ok cool" mean the same; without this the tokenizer
    learns tokens for two, three and four spaces and the model wastes capacity
    on layout. Single newlines are kept: they separate the lines of one turn.
    """
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def lowercase(text: str) -> str:
    """Lowercase everything. An OPTION, off by default in ``CleaningConfig``.

    Why it exists: classic NLP (bag of words, small vocabularies) lowercased to
    merge "Hello"/"hello". Why GPT does not: case carries meaning (names,
    "US" vs "us", the start of a sentence, SHOUTING), a byte-level BPE handles
    both cases cheaply, and a model trained on lowercase text can only ever
    answer in lowercase. The notebook measures what it saves and what it loses.
    """
    return text.lower()


# --------------------------------------------------------------------------------------
# 4. Spelling correction (slow, optional, and lossy: see the notebook)
# --------------------------------------------------------------------------------------

# Words that a dictionary flags but that are correct in chat. Deliberately small:
# the notebook shows what breaks without it, and an exercise grows it.
CHAT_ALLOWLIST = frozenset(
    """lol lmao haha hahaha omg btw idk tbh imo gonna wanna gotta kinda yeah yep nope
    ok okay hmm hey hi bye thx pls ya yea nah cool awesome""".split()
)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


@lru_cache(maxsize=4)
def spell_checker(distance: int = 2):
    """One shared pyspellchecker ``SpellChecker`` (loading its dictionary takes ~0.5 s).

    ``distance=1`` is far faster than the default 2 (02 measured 0.3 against 80 CPU seconds on the same
    1,000 messages) and catches most one-letter typos.
    """
    from spellchecker import SpellChecker

    return SpellChecker(distance=distance)


def _match_case(word: str, model: str) -> str:
    """Give ``word`` the capitalisation pattern of ``model`` ("Teh" -> "The")."""
    if model.isupper() and len(model) > 1:
        return word.upper()
    if model[0].isupper():
        return word[0].upper() + word[1:]
    return word


@lru_cache(maxsize=200_000)
def _best_correction(checker, word: str) -> str:
    """The checker's choice for one lowercase word (itself when known or hopeless), memoised:
    chat repeats its typos, and a distance-2 lookup costs milliseconds."""
    if checker.known([word]):
        return word
    candidates = checker.candidates(word) or ()
    # pyspellchecker's own correction() takes max() over a set: equally frequent candidates ("antman" -> "altman" or
    # "atman") then come out in an order that changes with Python's hash seed. Same rule, ties to the first word.
    return min(candidates, key=lambda c: (-checker[c], c), default=word)


def spelling_corrections(
    text: str, checker=None, allowlist: Iterable[str] = CHAT_ALLOWLIST
) -> list[tuple[int, int, str, str]]:
    """``(start, end, word, correction)`` for every word ``correct_spelling`` would change.

    For auditing: the notebook counts the most frequent corrections with it.
    """
    checker = checker or spell_checker()
    allow = {w.lower() for w in allowlist}
    out = []
    for match in _WORD.finditer(text):
        word = match.group(0)
        low = word.lower()
        if low in allow or len(low) < 2:
            continue
        fixed = _best_correction(checker, low)
        if fixed != low:
            out.append((match.start(), match.end(), word, _match_case(fixed, word)))
    return out


def correct_spelling(text: str, checker=None, allowlist: Iterable[str] = CHAT_ALLOWLIST) -> str:
    """Replace each unknown word with pyspellchecker's most likely correction.

    Word by word: punctuation, spaces, numbers and emoji are left exactly where
    they were, and the word's capitalisation is kept ("Teh" -> "The").
    Words in ``allowlist`` (compared lowercased) and words the checker knows are
    kept; words with no candidate are kept.

    Why it is off by default: it is slow (distance 2: about 37 chat messages a
    second on one idle core, so the full cpu-profile corpus would take most of an hour) and it *breaks* what a dictionary does not know: names
    ("Kaylee" -> "Kyle"), slang ("haha" -> "hah"), apostrophe-less contractions
    ("Im" -> "I", "theyre" -> "there"), acronyms ("GF" -> "OF"). Chat models
    should learn how people really write.
    """
    fixes = spelling_corrections(text, checker, allowlist)
    if not fixes:
        return text
    out, last = [], 0
    for start, end, _, fixed in fixes:
        out.append(text[last:start])
        out.append(fixed)
        last = end
    out.append(text[last:])
    return "".join(out)


# --------------------------------------------------------------------------------------
# 5. PII: e-mails, phone numbers, payment cards, IP addresses
# --------------------------------------------------------------------------------------

PII_PLACEHOLDERS = {"EMAIL": "<EMAIL>", "PHONE": "<PHONE>", "CARD": "<CARD>", "IP": "<IP>"}

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
)
# Cards: 13-19 digits, either in one run or in groups of 3-6 separated by one space or
# dash (4-4-4-4, 4-6-5, ...). The Luhn checksum then rejects 9 in 10 random numbers.
_CARD = re.compile(r"(?<![\w.,+-])(?:\d{13,19}|\d{4,6}(?:[ -]\d{3,6}){2,4})(?![\w]|[.,-]\d)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
# IPv6 candidates are validated by the standard library (times like 12:30:45 are not IPv6).
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_SEP = r"[ .-]?"
_PHONE = re.compile(
    r"(?<![\w+.,/-])(?:"
    # international: +CC then 1-6 groups of digits (optionally one in parentheses)
    r"\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"
    # North American: optional 1, area code (optionally in parentheses), 3 + 4 digits
    rf"|(?:1{_SEP})?(?:\(\d{{3}}\) ?|\d{{3}}{_SEP})\d{{3}}{_SEP}\d{{4}}"
    # national numbers with a trunk 0, e.g. UK 020 7946 0958 or 07911 123456
    r"|0\d{2,4}[ -]\d{3,4}(?:[ -]?\d{3,4})?"
    # local seven digits written with a dash: 555-1234
    r"|[2-9]\d{2}-\d{4}"
    r")(?![\w]|[.,/-]\d)"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and 90% of random numbers fail)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _valid_card(s: str) -> bool:
    """13-19 digits, a real issuer's first digit (2-6: Mastercard, Amex/Diners, Visa,
    Mastercard, Discover/UnionPay), not all one digit, and the Luhn checksum."""
    d = _digits(s)
    return 13 <= len(d) <= 19 and d[0] in "23456" and len(set(d)) > 1 and luhn_valid(d)


def _valid_phone(s: str) -> bool:
    d = _digits(s)
    if s.startswith("+"):
        return 8 <= len(d) <= 15  # E.164 allows at most 15 digits
    if s[0] == "0":
        return 10 <= len(d) <= 11
    if len(d) == 7:
        return True  # 555-1234 (the regex demands the dash)
    if len(d) == 11 and d[0] == "1":  # the North American country code
        d = d[1:]
    if len(d) != 10:
        return False
    if s.isdigit():  # a bare run of 10 digits: only if it is a valid North American number
        return d[0] in "23456789" and d[3] in "23456789"
    return True


def _valid_ipv6(s: str) -> bool:
    if sum(1 for part in s.split(":") if part) < 2:  # "::" or "a::" alone: too weak
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


# (kind, pattern, validator), in priority order: when two matches overlap the
# earlier kind wins (a card number is not also a phone number).
_PII_RULES: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = [
    ("EMAIL", _EMAIL, None),
    ("CARD", _CARD, _valid_card),
    ("IP", _IPV4, None),
    ("IP", _IPV6, _valid_ipv6),
    ("PHONE", _PHONE, _valid_phone),
]
_MAYBE_PII = re.compile(r"@|\d[^a-zA-Z]{0,3}\d[^a-zA-Z]{0,3}\d|:[0-9A-Fa-f]{0,4}:")


def _pii_spans(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans, in text order."""
    if not _MAYBE_PII.search(text):  # fast path: most chat messages have no 3 digits and no @
        return []
    taken: list[tuple[int, int, str]] = []
    for kind, pattern, valid in _PII_RULES:
        for m in pattern.finditer(text):
            start, end = m.span()
            if valid is not None and not valid(m.group(0)):
                continue
            if any(start < e and s < end for s, e, _ in taken):
                continue
            taken.append((start, end, kind))
    return sorted(taken)


def find_pii(text: str) -> list[tuple[str, str]]:
    """Every piece of PII found, as ``(kind, matched text)``, for auditing a corpus."""
    return [(kind, text[s:e]) for s, e, kind in _pii_spans(text)]


def mask_pii(text: str) -> str:
    """Replace e-mails, phone numbers, card numbers and IP addresses with placeholders.

    ``<EMAIL>``, ``<PHONE>``, ``<CARD>`` (Luhn-valid 13-19 digits), ``<IP>``
    (IPv4 with valid octets, and IPv6). All other text is left byte for byte
    untouched: times (5:30), years (2018), prices, dates and version numbers
    (3.8.1) are not PII.

    Why: a language model memorises rare strings it sees in training and can
    repeat them to anyone. Masking keeps the *shape* of the conversation ("my
    number is <PHONE>") without the person.
    """
    spans = _pii_spans(text)
    if not spans:
        return text
    out, last = [], 0
    for s, e, kind in spans:
        out.append(text[last:s])
        out.append(PII_PLACEHOLDERS[kind])
        last = e
    out.append(text[last:])
    return "".join(out)


# --------------------------------------------------------------------------------------
# 6. De-duplication of conversations
# --------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[^\w\s]+")
_WS = re.compile(r"\s+")


def conversation_text(conversation: dict) -> str:
    """All turns of a conversation, one per line: what de-duplication compares."""
    return "\n".join(m["content"] for m in conversation["messages"])


def _dedup_normalise(text: str) -> str:
    """Case, punctuation and spacing do not make a conversation new."""
    return _WS.sub(" ", _NON_WORD.sub(" ", text.lower())).strip()


def exact_duplicates(conversations: list[dict]) -> dict[str, str]:
    """``{dropped_id: kept_id}``: conversations whose normalised text equals an earlier one's.

    The first occurrence is kept, so the result depends only on the order of
    the input (deterministic). A SHA-1 of the normalised text is the key (not
    Python's ``hash``, which changes between runs).
    """
    first_seen: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for conv in conversations:
        key = hashlib.sha1(_dedup_normalise(conversation_text(conv)).encode("utf-8")).hexdigest()
        if key in first_seen:
            dropped[conv["id"]] = first_seen[key]
        else:
            first_seen[key] = conv["id"]
    return dropped


def _shingles(text: str, size: int) -> set[bytes]:
    words = _dedup_normalise(text).split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def near_duplicates(
    conversations: list[dict],
    threshold: float = 0.8,
    shingle_size: int = 3,
    num_perm: int = 128,
    seed: int = 1,
) -> dict[str, tuple[str, float]]:
    """``{dropped_id: (kept_id, estimated_jaccard)}`` for near-duplicate conversations.

    Each conversation becomes the set of its word ``shingle_size``-grams; MinHash
    (``num_perm`` hash functions, fixed ``seed``) estimates the Jaccard similarity
    of two sets, and LSH finds candidate pairs without comparing every pair
    (n² = 51 million pairs for 7,168 conversations). A conversation is dropped
    when an *earlier kept* one reaches ``threshold``; the input order decides
    who stays, so the result is deterministic.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[str, MinHash] = {}
    dropped: dict[str, tuple[str, float]] = {}
    for conv in conversations:
        mh = MinHash(num_perm=num_perm, seed=seed)
        mh.update_batch(sorted(_shingles(conversation_text(conv), shingle_size)))
        best, best_sim = None, -1.0
        for cand in sorted(lsh.query(mh)):  # sorted: set order must not decide ties
            sim = mh.jaccard(kept[cand])
            if sim >= threshold and sim > best_sim:
                best, best_sim = cand, sim
        if best is not None:
            dropped[conv["id"]] = (best, round(best_sim, 3))
        elif conv["id"] not in kept:
            lsh.insert(conv["id"], mh)
            kept[conv["id"]] = mh
    return dropped


# --------------------------------------------------------------------------------------
# 7. Quality filters: each says why a conversation goes
# --------------------------------------------------------------------------------------


def too_few_turns(conversation: dict, min_turns: int = 2) -> bool:
    """A single message is not a conversation: nothing to learn about replying."""
    return len(conversation["messages"]) < min_turns


def has_empty_turn(conversation: dict) -> bool:
    """A turn with no text left (it held only control characters, say): the
    conversation no longer alternates cleanly, so it goes rather than being patched."""
    return any(not m["content"].strip() for m in conversation["messages"])


def mostly_non_letters(text: str, min_letter_fraction: float = 0.5, min_chars: int = 20) -> bool:
    """True when fewer than ``min_letter_fraction`` of the visible characters are letters.

    Applied to a whole conversation: number dumps, keyboard mashing of symbols,
    pasted logs. Short texts (":)", "5:30?") are never judged: too little evidence.
    """
    visible = [ch for ch in text if not ch.isspace()]
    if len(visible) < min_chars:
        return False
    letters = sum(ch.isalpha() for ch in visible)
    return letters / len(visible) < min_letter_fraction


def has_overlong_turn(conversation: dict, max_chars: int = 2000) -> bool:
    """One turn longer than ``max_chars``: a paste, not chat (and it would fill the context)."""
    return any(len(m["content"]) > max_chars for m in conversation["messages"])


# --------------------------------------------------------------------------------------
# 8. The pipeline
# --------------------------------------------------------------------------------------


@dataclass
class CleaningConfig:
    """Which steps run, and their thresholds. The defaults are what the course uses."""

    fix_unicode: bool = True  # ftfy: mojibake, HTML entities, NFC
    uncurl_quotes: bool = True  # ’ -> ' (keyboard accident in chat, see fix_unicode)
    remove_control_chars: bool = True  # NUL, BOM, zero-width spaces; keeps emoji joiners
    normalize_whitespace: bool = True  # runs of spaces -> one, strip
    lowercase: bool = False  # off: GPT keeps case (the notebook measures why)
    spelling: bool = False  # off: slow and it breaks names and slang
    spelling_allowlist: frozenset = CHAT_ALLOWLIST  # words the corrector must not touch
    mask_pii: bool = True  # e-mails, phones, cards, IPs -> <EMAIL> ...
    min_turns: int = 2  # fewer turns: dropped
    min_letter_fraction: float = 0.5  # a conversation with fewer letters than this: dropped
    max_turn_chars: int = 2000  # a longer turn: the conversation is dropped
    dedup: bool = True  # exact and near-duplicate removal
    near_dup_threshold: float = 0.8  # estimated Jaccard of word shingles
    shingle_size: int = 3  # words per shingle
    num_perm: int = 128  # MinHash permutations (accuracy vs speed)
    seed: int = 1  # MinHash seed: same seed, same result


@dataclass
class CleaningReport:
    """What each step did. ``table()`` is one row per step; ``dropped`` one row per
    removed conversation (id, step, reason, duplicate_of). Never a silent drop:
    ``conversations_in == conversations_out + len(dropped)``."""

    conversations_in: int = 0
    conversations_out: int = 0
    messages_in: int = 0
    chars_in: int = 0
    steps: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    def table(self):
        """The per-step table as a pandas DataFrame."""
        import pandas as pd

        columns = ["step", "kind", "messages_changed", "chars_removed", "conversations_dropped", "seconds"]
        return pd.DataFrame(self.steps, columns=columns)

    def dropped_table(self):
        import pandas as pd

        return pd.DataFrame(self.dropped, columns=["id", "step", "reason", "duplicate_of"])

    def __str__(self) -> str:
        return (
            f"CleaningReport: {self.conversations_in} conversations in, {self.conversations_out} kept, "
            f"{len(self.dropped)} dropped\n{self.table().to_string(index=False)}"
        )

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def _text_steps(config: CleaningConfig) -> list[tuple[str, Callable[[str], str]]]:
    steps: list[tuple[str, Callable[[str], str]]] = []
    if config.fix_unicode:
        steps.append(("fix_unicode", lambda t: fix_unicode(t, uncurl_quotes=config.uncurl_quotes)))
    if config.remove_control_chars:
        steps.append(("remove_control_chars", remove_control_chars))
    if config.normalize_whitespace:
        steps.append(("normalize_whitespace", normalize_whitespace))
    if config.lowercase:
        steps.append(("lowercase", lowercase))
    if config.spelling:
        checker = spell_checker()
        allow = config.spelling_allowlist
        steps.append(("correct_spelling", lambda t: correct_spelling(t, checker, allow)))
    if config.mask_pii:
        steps.append(("mask_pii", mask_pii))
    return steps


def clean_conversations(
    conversations: list[dict], config: CleaningConfig | None = None
) -> tuple[list[dict], CleaningReport]:
    """Run the whole pipeline; return ``(cleaned conversations, report)``.

    Order: text steps on every message (unicode, control characters,
    whitespace, [lowercase], [spelling], PII), then quality filters, then exact
    and near de-duplication (last, so that two conversations differing only in
    junk characters are recognised as copies). The input is not modified; the
    output keeps the input order. Deterministic.
    """
    config = config or CleaningConfig()
    report = CleaningReport(
        conversations_in=len(conversations),
        messages_in=sum(len(c["messages"]) for c in conversations),
        chars_in=sum(len(m["content"]) for c in conversations for m in c["messages"]),
    )
    convs = [{**c, "messages": [dict(m) for m in c["messages"]]} for c in conversations]

    # --- text steps: count changed messages and removed characters
    for name, step in _text_steps(config):
        t0 = time.perf_counter()
        changed = removed = 0
        for conv in convs:
            for m in conv["messages"]:
                before = m["content"]
                after = step(before)
                if after != before:
                    changed += 1
                    removed += len(before) - len(after)
                    m["content"] = after
        report.steps.append(
            dict(step=name, kind="edit", messages_changed=changed, chars_removed=removed,
                 conversations_dropped=0, seconds=round(time.perf_counter() - t0, 3))
        )

    def drop(step: str, predicate: Callable[[dict], str | None], kind: str = "filter") -> None:
        """Remove conversations for which ``predicate`` returns a reason; record each."""
        nonlocal convs
        t0 = time.perf_counter()
        keep, removed_chars = [], 0
        for conv in convs:
            verdict = predicate(conv)
            if verdict is None:
                keep.append(conv)
                continue
            reason, duplicate_of = verdict if isinstance(verdict, tuple) else (verdict, None)
            report.dropped.append(dict(id=conv["id"], step=step, reason=reason, duplicate_of=duplicate_of))
            removed_chars += sum(len(m["content"]) for m in conv["messages"])
        report.steps.append(
            dict(step=step, kind=kind, messages_changed=0, chars_removed=removed_chars,
                 conversations_dropped=len(convs) - len(keep), seconds=round(time.perf_counter() - t0, 3))
        )
        convs = keep

    drop("too_few_turns", lambda c: f"fewer than {config.min_turns} turns"
         if too_few_turns(c, config.min_turns) else None)
    drop("empty_turn", lambda c: "a turn is empty after cleaning" if has_empty_turn(c) else None)
    drop("overlong_turn", lambda c: f"a turn longer than {config.max_turn_chars} characters"
         if has_overlong_turn(c, config.max_turn_chars) else None)
    drop("mostly_non_letters", lambda c: f"fewer than {config.min_letter_fraction:.0%} letters"
         if mostly_non_letters(conversation_text(c), config.min_letter_fraction) else None)

    if config.dedup:
        exact = exact_duplicates(convs)
        drop("exact_duplicates", lambda c: ("same text as an earlier conversation", exact[c["id"]])
             if c["id"] in exact else None, kind="dedup")
        t0 = time.perf_counter()
        near = near_duplicates(convs, config.near_dup_threshold, config.shingle_size,
                               config.num_perm, config.seed)
        near_seconds = time.perf_counter() - t0
        drop("near_duplicates", lambda c: (f"Jaccard ~{near[c['id']][1]:.2f} with an earlier conversation",
                                           near[c["id"]][0]) if c["id"] in near else None, kind="dedup")
        report.steps[-1]["seconds"] = round(report.steps[-1]["seconds"] + near_seconds, 3)

    report.conversations_out = len(convs)
    return convs, report
