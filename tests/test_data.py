"""utils.data: one schema for every source, clear errors for bad input, leak-free splits."""

import json
from dataclasses import replace

import pytest

from utils import data
from utils.config import PROFILES, REPO_ROOT, CourseConfig, Paths
from utils.data import DataFormatError, load_file, validate_conversation
from utils.io import read_jsonl

FIXTURES = REPO_ROOT / "data" / "fixtures"
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(*records):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


def conv(*turns, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


# --------------------------------------------------------------------------- bad input: strict mode

BAD_INPUTS = {
    # name: (file name, content, line, field, words the message must contain)
    "empty file": ("empty.jsonl", "\n  \n", 1, "(file)", "empty"),
    "not utf-8": ("latin1.txt", "User: hi\nAssistant: caf\xe9\n".encode("latin-1"), 2, "(encoding)", "offset 23"),
    "malformed jsonl": ("broken.jsonl", jsonl(GOOD, '{"messages": [}'), 2, "(json)", "not valid JSON"),
    "no turns": ("no_turns.jsonl", jsonl(GOOD, GOOD, {"messages": []}), 3, "messages", "no turns"),
    "unknown role": ("bot.jsonl", jsonl(conv(("user", "hi"), ("assistant", "yo"), ("bot", "x"))), 1,
                     "messages[2].role", "allowed: user, assistant, system"),
    "missing content": ("nocontent.jsonl", jsonl(GOOD, {"messages": [{"role": "user"}]}), 2,
                        "messages[0].content", "missing"),
    "blank content": ("blank.csv", "conversation_id,role,content\na,user,hi\na,assistant,\"  \"\n", 3,
                      "messages[1].content", "empty"),
    "no alternation": ("twice.jsonl", jsonl(conv(("user", "a"), ("user", "b"))), 1, "messages[1].role",
                       "alternate"),
    "starts with assistant": ("first.txt", "Assistant: hello\nUser: hi\n", 1, "messages[0].role", "'user'"),
    "late system": ("late.jsonl", jsonl(conv(("user", "a"), ("system", "b"))), 1, "messages[1].role", "first"),
    "csv unknown role on its own line": ("roles.csv", "conversation_id,role,content\n"
                                         "a,user,hi\na,assistant,hello\nb,user,hey\nb,robot,beep\n", 5,
                                         "messages[1].role", "'robot'"),
    "csv header": ("header.csv", "id,speaker,text\n1,user,hi\n", 1, "(header)", "conversation_id"),
    "txt without prefix": ("plain.txt", "User: hi\nAssistant: hello\n\nUser: hey\nsure thing\n", 5, "speaker",
                           "User:, Assistant: or System:"),
    "json list element": ("list.json", "[\n" + json.dumps(GOOD) + ",\n" + json.dumps(conv(("user", "a"), ("ai", "b")))
                          + "\n]\n", 3, "messages[1].role", "'ai'"),
    "json not a list": ("obj.json", json.dumps(GOOD), 1, "(json)", "list"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_file_line_and_field(tmp_path, case):
    name, content, line, field, words = BAD_INPUTS[case]
    with pytest.raises(DataFormatError) as caught:
        load_file(write(tmp_path, name, content))
    message = str(caught.value)
    assert name in message and f"line {line}" in message and field in message and words in message, message
    assert "To fix:" in message
    assert str(tmp_path) not in message  # only the file name: the same text on every machine
    assert isinstance(caught.value, ValueError)


def test_unsupported_extension(tmp_path):
    with pytest.raises(DataFormatError, match=r"notes\.docx.*\.jsonl, \.json, \.csv, \.txt"):
        load_file(write(tmp_path, "notes.docx", "User: hi"))


def test_validate_conversation_directly():
    assert validate_conversation(GOOD) is GOOD
    with pytest.raises(DataFormatError, match=r"chats, line 7, field messages\[0\]\.role"):
        validate_conversation(conv(("assistant", "hi")), where="chats", line=7)
    with pytest.raises(DataFormatError, match="only a system message"):
        validate_conversation(conv(("system", "be nice")))
    with pytest.raises(DataFormatError, match="field id: must be a string"):
        validate_conversation({**GOOD, "id": 3})


# --------------------------------------------------------------------------- lenient mode


def test_lenient_keeps_good_and_reports_bad(tmp_path, capsys):
    path = write(tmp_path, "mixed.jsonl", jsonl(GOOD, "{not json", conv(("user", "a"), ("bot", "b")), GOOD))
    result = load_file(path, lenient=True)
    assert [c["id"] for c in result.conversations] == ["mixed-1", "mixed-4"]
    assert [(p.line, p.field) for p in result.skipped] == [(2, "(json)"), (3, "messages[1].role")]
    printed = capsys.readouterr().out
    assert "kept 2 conversation(s), skipped 2" in printed and "mixed.jsonl, line 3" in printed


def test_lenient_still_raises_for_the_whole_file(tmp_path):
    with pytest.raises(DataFormatError, match="empty"):
        load_file(write(tmp_path, "empty.csv", ""), lenient=True)


def test_lenient_txt_and_csv(tmp_path):
    txt = load_file(write(tmp_path, "t.txt", "User: a\nAssistant: b\n\nBot: c\n\nUser: d\n"), lenient=True)
    assert len(txt.conversations) == 2 and txt.skipped[0].line == 4
    csv_ = load_file(write(tmp_path, "c.csv", "conversation_id,role,content\nx,user,a\ny,assistant,b\n"), lenient=True)
    assert [c["id"] for c in csv_.conversations] == ["x"] and csv_.skipped[0].field == "messages[0].role"


def test_one_jsonl_parser_for_conversations_and_other_files(tmp_path):
    """load_file and utils.io.read_jsonl share utils.io.parse_jsonl: the same line numbers, blank lines skipped."""
    path = write(tmp_path, "chats.jsonl", "\n" + jsonl(GOOD, GOOD) + "\n" + '{"messages": [}\n')
    with pytest.raises(ValueError, match=r"chats\.jsonl, line 5: not valid JSON"):
        list(read_jsonl(path))
    result = load_file(path, lenient=True)
    assert [c["id"] for c in result.conversations] == ["chats-2", "chats-3"]
    assert [(p.line, p.field) for p in result.skipped] == [(5, "(json)")]


def test_problem_reads_well():
    problem = data.Problem("chats.csv", 4, "messages[1].role", "'bot' is not a role", "use user or assistant")
    assert str(problem) == "chats.csv, line 4, field messages[1].role: 'bot' is not a role. To fix: use user or assistant"


# --------------------------------------------------------------------------- the learner's formats


@pytest.mark.parametrize("suffix, count", [("jsonl", 3), ("csv", 2), ("txt", 2)])
def test_fixtures_load(suffix, count):
    result = load_file(FIXTURES / f"my_chats.{suffix}")
    assert len(result.conversations) == count and result.skipped == []
    for c in result.conversations:
        assert set(c) == {"id", "source", "license", "messages"}
        assert c["source"] == f"my_chats.{suffix}"
        validate_conversation(c)


def test_formats_agree(tmp_path):
    """The same conversation written in every format loads to the same messages."""
    messages = conv(("system", "be brief"), ("user", "hi, there"), ("assistant", "hello"))["messages"]
    files = {
        "a.jsonl": jsonl({"messages": messages}),
        "a.json": json.dumps([{"messages": messages}], indent=2),
        "a.csv": 'conversation_id,role,content\n1,system,be brief\n1,User,"hi, there"\n1,assistant,hello\n',
        "a.txt": "System: be brief\nuser: hi, there\nAssistant: hello\n",
    }
    for name, text in files.items():
        assert load_file(write(tmp_path, name, text)).conversations[0]["messages"] == messages, name


def test_csv_multiline_field_keeps_line_numbers(tmp_path):
    text = 'conversation_id,role,content\na,user,"two\nlines"\na,user,again\n'
    with pytest.raises(DataFormatError, match="line 4, field messages\\[1\\].role"):
        load_file(write(tmp_path, "m.csv", text))


def test_utf8_bom_is_fine(tmp_path):
    assert load_file(write(tmp_path, "bom.csv", "\ufeffconversation_id,role,content\n1,user,hi\n")).conversations


# --------------------------------------------------------------------------- embedded chitchat


@pytest.fixture(scope="module")
def chitchat():
    return data.load_chitchat()


def test_chitchat_full_file(chitchat):
    assert len(chitchat) == 7168
    assert len({c["id"] for c in chitchat}) == 7168
    stats = data.conversation_stats(chitchat)
    assert 138_000 < stats["turns"] <= 138_737  # 138,737 message groups; empty messages dropped
    for c in chitchat:
        validate_conversation(c)
        assert c["source"] == "chitchat-dataset" and c["license"] == "MIT"


def test_chitchat_mapping_merges_and_alternates():
    record = {"messages": [
        [{"sender": "A", "text": "hello", "timestamp": ""}, {"sender": "A", "text": "you there?", "timestamp": ""}],
        [{"sender": "B", "text": "yes", "timestamp": ""}],
        [{"sender": "B", "text": "  ", "timestamp": ""}],
        [{"sender": "A", "text": "", "timestamp": ""}],
        [{"sender": "B", "text": "what's up", "timestamp": ""}],
        [{"sender": "A", "text": "not much", "timestamp": ""}],
    ]}
    mapped = data.chitchat_to_conversation("c1", record)
    assert mapped["messages"] == [
        {"role": "user", "content": "hello\nyou there?"},
        {"role": "assistant", "content": "yes\nwhat's up"},
        {"role": "user", "content": "not much"},
    ]


def test_chitchat_first_n_is_deterministic(chitchat):
    first = data.load_chitchat(max_conversations=5)
    assert first == chitchat[:5] and [c["id"] for c in first] == sorted(c["id"] for c in first)


# --------------------------------------------------------------------------- oasst1 message trees


def row(message_id, parent_id, role, text, rank=None, lang="en", **extra):
    return {"message_id": message_id, "parent_id": parent_id, "role": role, "text": text,
            "rank": rank, "lang": lang, **extra}


TREE = [
    row("r1", None, "prompter", "What is a prime?"),
    row("a1", "r1", "assistant", "A worse answer.", rank=1),
    row("a2", "r1", "assistant", "A number with exactly two divisors.", rank=0),
    row("p1", "a2", "prompter", "Is 1 prime?"),
    row("p2", "a1", "prompter", "follow-up on the worse answer"),
    row("a3", "p1", "assistant", "No: it has one divisor.", rank=None),
    row("a4", "p1", "assistant", "Deleted reply.", rank=0, deleted=True),
    row("r2", None, "prompter", "Hola, ¿qué tal?", lang="es"),
    row("a5", "r2", "assistant", "Bien.", lang="es"),
    row("r3", None, "prompter", "Tell me a joke."),
    row("a6", "r3", "assistant", "Unranked first.", rank=None),
    row("a7", "r3", "assistant", "Ranked wins.", rank=2),
    row("r4", None, "prompter", "Spam", review_result=False),
]


def test_flatten_follows_best_ranked_chain():
    conversations = data.flatten_message_tree(TREE)
    assert [c["id"] for c in conversations] == ["r1", "r3"]  # r2 is Spanish, r4 failed review
    assert [m["content"] for m in conversations[0]["messages"]] == [
        "What is a prime?", "A number with exactly two divisors.", "Is 1 prime?", "No: it has one divisor."]
    assert [m["role"] for m in conversations[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conversations[1]["messages"][1]["content"] == "Ranked wins."
    for c in conversations:
        validate_conversation(c)
        assert c["license"] == "Apache-2.0" and c["source"] == "OpenAssistant/oasst1"


def test_flatten_other_language_and_no_filter():
    assert [c["id"] for c in data.flatten_message_tree(TREE, lang="es")] == ["r2"]
    assert [c["id"] for c in data.flatten_message_tree(TREE, lang=None)] == ["r1", "r2", "r3"]


def test_offline_falls_back_to_chitchat(capsys):
    conversations = data.load_conversations("OpenAssistant/oasst1", online=False, max_conversations=3)
    assert len(conversations) == 3 and {c["source"] for c in conversations} == {"chitchat-dataset"}
    assert "Offline" in capsys.readouterr().out


# --------------------------------------------------------------------------- splits


def many(n):
    return [{**conv(("user", f"q{i}"), ("assistant", "a")), "id": f"c{i}", "source": "t", "license": "x"}
            for i in range(n)]


def test_split_by_conversation_no_leakage_and_fractions():
    splits = data.split_conversations(many(1000), seed=1)
    ids = {name: {c["id"] for c in rows} for name, rows in splits.items()}
    assert list(splits) == ["train", "validation", "test"]
    assert [len(ids[n]) for n in splits] == [800, 100, 100]
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])
    assert set().union(*ids.values()) == {f"c{i}" for i in range(1000)}


def test_split_is_deterministic_and_seeded():
    conversations = many(50)
    assert data.split_conversations(conversations, seed=7) == data.split_conversations(conversations, seed=7)
    assert data.split_conversations(conversations, seed=7) != data.split_conversations(conversations, seed=8)
    assert [len(v) for v in data.split_conversations(conversations, 0, (0.5, 0.5, 0.0)).values()] == [25, 25, 0]


def test_split_rejects_bad_fractions_and_duplicate_ids():
    with pytest.raises(ValueError, match="sum to 1"):
        data.split_conversations(many(10), seed=0, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="c0"):
        data.split_conversations(many(3) + many(1), seed=0)


def test_save_and_load_round_trip_overwrites_cleanly(tmp_path):
    folder = tmp_path / "conversations"
    splits = data.split_conversations(many(20), seed=0)
    data.save_splits(splits, folder)
    data.save_splits(splits, folder)  # a second run replaces the first
    loaded = data.load_saved_splits(folder)
    assert {name: loaded[name].to_list() for name in loaded} == splits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conversations"]  # no temp folders left behind


def test_build_and_load_splits_for_a_profile(tmp_path, capsys):
    cfg = CourseConfig(profile=replace(PROFILES["ci"], max_conversations=30), device="cpu", online=False,
                       seed=3, paths=Paths(tmp_path, "ci").make())
    loaded = data.load_splits(cfg)  # nothing saved yet: rebuilds and says so
    assert "running notebook 01's pipeline" in capsys.readouterr().out
    assert sum(loaded.num_rows.values()) == 30 and (cfg.paths.processed / "DATASET_CARD.md").exists()
    assert data.load_splits(cfg)["train"].to_list() == loaded["train"].to_list()
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- statistics and card


def test_stats_and_lengths_frame():
    conversations = [conv(("system", "s"), ("user", "one two"), ("assistant", "three")), conv(("user", "four"))]
    stats = data.conversation_stats(conversations)
    assert stats["conversations"] == 2 and stats["turns"] == 4 and stats["words"] == 5
    assert stats["role_counts"] == {"user": 2, "assistant": 1, "system": 1}
    assert stats["median_turns_per_conversation"] == 2 and stats["mean_words_per_turn"] == 1.25
    frame = data.lengths_frame([{**c, "id": str(i), "source": "t"} for i, c in enumerate(conversations)])
    assert list(frame["words"]) == [1, 2, 1, 1] and list(frame["role"])[:2] == ["system", "user"]


def test_dataset_card_mentions_what_matters():
    splits = data.split_conversations(many(10), seed=0)
    card = data.dataset_card(splits, ["chitchat-dataset", "t"])
    for words in ["MIT", "## Splits", "| train | 8 |", "PII", "Intended use", "typos", "| t | 10 |"]:
        assert words in card, words
