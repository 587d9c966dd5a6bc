"""Tests of utils.cleaning: the text steps, PII masking on a labelled set, dedup, the pipeline."""

import pytest

from utils import cleaning
from utils.cleaning import (
    CleaningConfig,
    clean_conversations,
    correct_spelling,
    exact_duplicates,
    find_pii,
    fix_unicode,
    mask_pii,
    near_duplicates,
    normalize_whitespace,
    remove_control_chars,
)

# --------------------------------------------------------------------------------------
# PII: a labelled set. Each positive is (kind, the PII string, a sentence holding it).
# --------------------------------------------------------------------------------------

PII_POSITIVES = [
    # e-mail
    ("EMAIL", "natalie.smith@gmail.com", "email me at natalie.smith@gmail.com ok?"),
    ("EMAIL", "chitchat@byu.edu", "chitchat@byu.edu"),
    ("EMAIL", "john_doe+news@example.co.uk", "it's john_doe+news@example.co.uk."),
    ("EMAIL", "A.B-C@sub.domain.org", "Send to A.B-C@sub.domain.org, thanks"),
    ("EMAIL", "x1@y2.io", "(x1@y2.io)"),
    ("EMAIL", "first.last@university.edu", "my school one is first.last@university.edu lol"),
    ("EMAIL", "me@my-site.com", "<me@my-site.com>"),
    ("EMAIL", "sales%dept@corp.net", "try sales%dept@corp.net!"),
    ("EMAIL", "UPPER@CASE.COM", "UPPER@CASE.COM is mine"),
    ("EMAIL", "bob99@hotmail.com", "hit me up bob99@hotmail.com\nor text"),
    # phone, North American
    ("PHONE", "(808) 782-1557", "giiiirllll\n(808) 782-1557\nThat's my number"),
    ("PHONE", "801-555-1234", "call 801-555-1234 tomorrow"),
    ("PHONE", "801.555.1234", "it's 801.555.1234."),
    ("PHONE", "801 555 1234", "801 555 1234 is my cell"),
    ("PHONE", "+1 801 555 1234", "from abroad dial +1 801 555 1234"),
    ("PHONE", "+1-801-555-1234", "+1-801-555-1234"),
    ("PHONE", "1-800-356-9377", "call 1-800-356-9377 for flowers"),
    ("PHONE", "(801)555-1234", "number: (801)555-1234"),
    ("PHONE", "8015551234", "text me 8015551234 anytime"),
    ("PHONE", "555-1234", "my old number was 555-1234, lol"),
    ("PHONE", "123-456-7890", "fake one: 123-456-7890"),
    # phone, international
    ("PHONE", "+44 20 7946 0958", "London office +44 20 7946 0958"),
    ("PHONE", "+33 1 42 68 53 00", "Paris: +33 1 42 68 53 00."),
    ("PHONE", "+49 (0)30 1234567", "Berlin +49 (0)30 1234567"),
    ("PHONE", "+91 98765 43210", "whatsapp +91 98765 43210"),
    ("PHONE", "+81-3-1234-5678", "Tokyo +81-3-1234-5678"),
    ("PHONE", "+61 2 9876 5432", "Sydney (+61 2 9876 5432)"),
    ("PHONE", "+447911123456", "mobile +447911123456"),
    ("PHONE", "020 7946 0958", "UK: 020 7946 0958"),
    ("PHONE", "07911 123456", "my mobile is 07911 123456"),
    # payment cards (Luhn-valid test numbers)
    ("CARD", "4111 1111 1111 1111", "my card is 4111 1111 1111 1111 exp 12/25"),
    ("CARD", "4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("CARD", "4111111111111111", "card 4111111111111111."),
    ("CARD", "5500 0000 0000 0004", "mastercard 5500 0000 0000 0004"),
    ("CARD", "3782 822463 10005", "amex 3782 822463 10005 ok"),
    ("CARD", "378282246310005", "amex 378282246310005"),
    ("CARD", "6011 1111 1111 1117", "discover 6011 1111 1111 1117"),
    ("CARD", "4222222222222", "old visa 4222222222222"),
    ("CARD", "5105-1051-0510-5100", "use 5105-1051-0510-5100, thanks"),
    # IP addresses
    ("IP", "192.168.1.1", "router at 192.168.1.1"),
    ("IP", "10.0.0.255", "ssh into 10.0.0.255."),
    ("IP", "8.8.8.8", "dns 8.8.8.8, always"),
    ("IP", "172.16.254.1", "(172.16.254.1)"),
    ("IP", "255.255.255.0", "mask 255.255.255.0"),
    ("IP", "2001:db8:85a3::8a2e:370:7334", "v6 is 2001:db8:85a3::8a2e:370:7334"),
    ("IP", "fe80::1ff:fe23:4567:890a", "link-local fe80::1ff:fe23:4567:890a here"),
    ("IP", "2001:0db8:0000:0000:0000:ff00:0042:8329", "full 2001:0db8:0000:0000:0000:ff00:0042:8329"),
]

# Text that looks numeric or address-like but is not PII: must come back unchanged.
PII_NEGATIVES = [
    "let's meet at 5:30 or 17:45",
    "I graduated in 2018 and moved in 2019",
    "it costs $1,299.99 or about 1500 dollars",
    "born 12/25/1998",
    "the date is 2018-05-02T19:38:15Z",
    "python 3.8.1 and node v10.15.3",
    "version 2.0.1-beta",
    "the score was 21-14",
    "my zip code is 84604",
    "population 7,800,000,000",
    "pi is 3.14159265358979",
    "ISBN 978-3-16-148410-0",
    "the number 1234567890123456 is random",
    "binary 0101101001010",
    "99956644665999 lol",
    "999.999.999.999 is not an address",
    "10.0.0.256 is out of range",
    "follow me @john_doe",
    "user@localhost has no domain",
    "lol :) :-( <3 ;)",
    "open 9-5, 24/7",
    "I ran 5 miles in 42:10",
    "the meeting is 12:30:45",
    "page 120 to 135",
    "between 100 and 200 people",
    "coordinates 40.7128, -74.0060",
    "order #12345 shipped",
    "1 2 3 4 5 6 7 8 9 10 11 12 13",
    "C++ and C# and F#",
    "it was 99 percent + 1",
    "temperature +20 degrees",
    "about 2 or 3 hours",
    "call me at like 5 or 6",
    "i got 4/5 on the quiz and 100% on the final",
]


def pii_scores():
    """(recall, precision) on the labelled set, counting spans found by find_pii."""
    true_pos = false_neg = false_pos = 0
    for kind, span, text in PII_POSITIVES:
        found = find_pii(text)
        if (kind, span) in found:
            true_pos += 1
        else:
            false_neg += 1
        false_pos += sum(1 for f in found if f != (kind, span))
    for text in PII_NEGATIVES:
        false_pos += len(find_pii(text))
    return true_pos / (true_pos + false_neg), true_pos / max(1, true_pos + false_pos)


@pytest.mark.parametrize("kind,span,text", PII_POSITIVES, ids=[p[1] for p in PII_POSITIVES])
def test_mask_pii_positive(kind, span, text):
    masked = mask_pii(text)
    assert masked == text.replace(span, cleaning.PII_PLACEHOLDERS[kind]), masked


@pytest.mark.parametrize("text", PII_NEGATIVES)
def test_mask_pii_negative_untouched(text):
    assert mask_pii(text) == text
    assert find_pii(text) == []


def test_pii_recall_and_precision():
    recall, precision = pii_scores()
    print(f"PII recall={recall:.3f} precision={precision:.3f} "
          f"({len(PII_POSITIVES)} positives, {len(PII_NEGATIVES)} negatives)")
    assert len(PII_POSITIVES) >= 40 and len(PII_NEGATIVES) >= 30
    assert recall >= 0.95 and precision >= 0.95


def test_mask_pii_several_in_one_text():
    text = "mail a@b.com or call (801) 555-1234 from 10.1.2.3, card 4111 1111 1111 1111."
    assert mask_pii(text) == "mail <EMAIL> or call <PHONE> from <IP>, card <CARD>."
    assert [k for k, _ in find_pii(text)] == ["EMAIL", "PHONE", "IP", "CARD"]


def test_luhn():
    assert cleaning.luhn_valid("4111111111111111")
    assert not cleaning.luhn_valid("4111111111111112")


# --------------------------------------------------------------------------------------
# Text steps
# --------------------------------------------------------------------------------------


def test_fix_unicode_mojibake():
    assert fix_unicode("donâ€™t") == "don't"
    assert fix_unicode("donâ€™t", uncurl_quotes=False) == "don\u2019t"
    assert fix_unicode("cafÃ©") == "café"
    assert fix_unicode("fish &amp; chips") == "fish & chips"
    assert fix_unicode("plain ascii stays") == "plain ascii stays"


def test_fix_unicode_nfc():
    assert fix_unicode("cafe\u0301") == "caf\u00e9"  # e + combining accent -> é


def test_remove_control_chars():
    assert remove_control_chars("he\x00llo\u200b wor\ufeffld\u200e") == "hello world"
    assert remove_control_chars("soft\u00adhyphen") == "softhyphen"
    assert remove_control_chars("keep\ttabs\nand newlines") == "keep\ttabs\nand newlines"
    assert remove_control_chars("windows\r\nline\rbreaks") == "windows\nline\nbreaks"
    assert remove_control_chars("bell\x07 and esc\x1b") == "bell and esc"


def test_remove_control_chars_keeps_emoji_sequences():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # 👨‍👩‍👧
    coder = "\U0001F469\U0001F3FD\u200d\U0001F4BB"  # 👩🏽‍💻 (skin tone + ZWJ)
    rainbow = "\U0001F3F3\ufe0f\u200d\U0001F308"  # 🏳️‍🌈
    scotland = "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"
    for emoji in (family, coder, rainbow, scotland):
        assert remove_control_chars(f"hi {emoji}!") == f"hi {emoji}!"
    # a stray joiner next to ASCII or a space joins nothing: it goes
    assert remove_control_chars("a\u200db \u200d\U0001F600") == "ab \U0001F600"
    # Persian uses ZWNJ inside words: kept
    assert remove_control_chars("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert remove_control_chars("orphan tag\U000E0067 here") == "orphan tag here"


def test_normalize_whitespace():
    assert normalize_whitespace("  ok \t\t cool  ") == "ok cool"
    assert normalize_whitespace("a\u00a0\u2009b") == "a b"
    assert normalize_whitespace("line one  \n  line two") == "line one\nline two"
    assert normalize_whitespace("a\n\n\n\n\nb") == "a\n\nb"


def test_lowercase_is_optional():
    assert cleaning.lowercase("Hello US") == "hello us"
    assert CleaningConfig().lowercase is False


def test_correct_spelling_keeps_case_punctuation_and_allowlist():
    assert correct_spelling("Teh cat, speling!") == "The cat, spelling!"
    assert correct_spelling("lol gonna go", allowlist={"lol", "gonna"}) == "lol gonna go"
    assert correct_spelling("meet at 5:30 :)") == "meet at 5:30 :)"


# --------------------------------------------------------------------------------------
# De-duplication
# --------------------------------------------------------------------------------------


def conv(cid, *turns):
    roles = ["user", "assistant"]
    return {"id": cid, "source": "test", "license": "MIT",
            "messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


BASE_TURNS = [
    "hey how was your weekend, did you end up going hiking up the canyon with your roommates",
    "yeah we went up saturday morning and it was freezing but the view from the top was amazing",
    "that sounds so fun, I have been wanting to go but my classes have been crazy this semester",
    "you should come next time, we are planning another trip in two weeks if the weather holds",
]


def test_exact_duplicates_ignore_case_and_punctuation():
    a = conv("a", *BASE_TURNS)
    b = conv("b", *[t.upper() + "!!" for t in BASE_TURNS])
    c = conv("c", "something", "else entirely")
    assert exact_duplicates([a, b, c]) == {"b": "a"}


def test_near_duplicates_found_and_deterministic():
    a = conv("a", *BASE_TURNS)
    edited = list(BASE_TURNS)
    edited[3] = edited[3].replace("two weeks", "three weeks")
    b = conv("b", *edited)
    c = conv("c", "totally different", "talk about cooking pasta and tomato sauce recipes tonight")
    first = near_duplicates([a, b, c], threshold=0.8)
    assert set(first) == {"b"} and first["b"][0] == "a" and first["b"][1] >= 0.8
    assert near_duplicates([a, b, c], threshold=0.8) == first
    assert near_duplicates([c, b, a], threshold=0.8) == {"a": ("b", first["b"][1])}


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


def small_corpus():
    return [
        conv("ok1", "hi there  friend", "hello!\u200b how are you"),
        conv("dup", "HI there friend", "hello! how are you"),  # exact duplicate of ok1
        conv("one", "anyone home?"),  # a single turn
        conv("empty", "hi", "\u200b\ufeff"),  # empty after cleaning
        conv("long", "hi", "x" * 3000),
        conv("nums", "1234 5678 9999 0000 1111 2222", "3333 4444 5555 6666 7777 8888"),
        conv("pii", "my email is a@b.com", "call 801-555-1234"),
        conv("near1", *BASE_TURNS),
        conv("near2", *BASE_TURNS[:3], BASE_TURNS[3].replace("two weeks", "three weeks")),
    ]


def test_clean_conversations_report_adds_up():
    corpus = small_corpus()
    snapshot = [dict(c, messages=[dict(m) for m in c["messages"]]) for c in corpus]
    cleaned, report = clean_conversations(corpus, CleaningConfig())
    assert corpus == snapshot  # the input is not modified
    assert report.conversations_in == len(corpus)
    assert report.conversations_in == report.conversations_out + len(report.dropped)
    table = report.table()
    assert table["conversations_dropped"].sum() == len(report.dropped)
    reasons = {d["id"]: d["step"] for d in report.dropped}
    assert reasons == {"dup": "exact_duplicates", "one": "too_few_turns", "empty": "empty_turn",
                       "long": "overlong_turn", "nums": "mostly_non_letters", "near2": "near_duplicates"}
    by_id = {c["id"]: c for c in cleaned}
    assert [c["id"] for c in cleaned] == ["ok1", "pii", "near1"]
    assert by_id["ok1"]["messages"][0]["content"] == "hi there friend"
    assert by_id["pii"]["messages"][1]["content"] == "call <PHONE>"
    assert report.dropped_table().set_index("id").loc["dup", "duplicate_of"] == "ok1"


def test_clean_conversations_deterministic_and_configurable():
    corpus = small_corpus()
    a, ra = clean_conversations(corpus)
    b, rb = clean_conversations(corpus)
    assert a == b and ra.dropped == rb.dropped
    lower, _ = clean_conversations(corpus, CleaningConfig(lowercase=True, dedup=False, mask_pii=False))
    assert {c["id"] for c in lower} >= {"ok1", "dup", "pii", "near1", "near2"}
    assert all(m["content"] == m["content"].lower() for c in lower for m in c["messages"])
