"""Conversations from every source, in one schema, validated, split and saved.

Every later notebook sees a conversation as the same plain dict::

    {"id": str, "source": str, "license": str,
     "messages": [{"role": "user" | "assistant" | "system", "content": str}, ...]}

An optional system message comes first; then user and assistant alternate,
starting with the user. Sources:

- ``load_chitchat``: the embedded ``chitchat-dataset`` (MIT), real human chats, offline.
- ``load_hub_conversations``: a Hugging Face hub dataset (OpenAssistant oasst1), online, or a local copy in the hub's formats.
- ``load_file``: the learner's own ``.jsonl``, ``.json``, ``.csv`` or ``.txt`` file.

Bad input raises ``DataFormatError`` naming the file, the line and the field,
and saying what to do; ``lenient=True`` skips bad conversations and reports them
instead. Nothing is ever dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import shutil
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from utils.io import parse_jsonl, write_atomically

ROLES = ("user", "assistant", "system")
CHITCHAT = "chitchat-dataset"
OASST1 = "OpenAssistant/oasst1"
FILE_FORMATS = (".jsonl", ".json", ".csv", ".txt")
SPLIT_NAMES = ("train", "validation", "test")


# --------------------------------------------------------------------------- provenance


@dataclass(frozen=True)
class SourceInfo:
    """What a dataset card says about one source: where it came from and under which licence."""

    name: str
    license: str
    url: str
    language: str
    how_collected: str
    known_issues: str


SOURCES = {
    CHITCHAT: SourceInfo(
        name=CHITCHAT,
        license="MIT",
        url="https://github.com/BYU-PCCL/chitchat-dataset",
        language="English (en)",
        how_collected=(
            "Crowd workers chatted in pairs about an open prompt (BYU PCCL, 2018). "
            "Shipped on PyPI as `chitchat-dataset`, so it works offline. The speaker who "
            "writes first is mapped to `user`, the other to `assistant`."
        ),
        known_issues=(
            "Casual, unedited text: typos, slang, lowercase. Many conversations have "
            "a single turn (nobody replied). Both speakers are people, so the `assistant` "
            "side is not assistant-like. Participants may mention names, places or other "
            "personal details (PII risk)."
        ),
    ),
    OASST1: SourceInfo(
        name=OASST1,
        license="Apache-2.0",
        url="https://huggingface.co/datasets/OpenAssistant/oasst1",
        language="English (en) after filtering; the source is multilingual",
        how_collected=(
            "Volunteers wrote prompts and assistant replies and ranked the replies "
            "(OpenAssistant, 2023). Each message tree is flattened to its root prompt "
            "followed by the best-ranked reply at every step."
        ),
        known_issues=(
            "Volunteer-written replies vary in quality and can be wrong. Some text was "
            "written by non-native speakers. Moderation removed most PII and toxicity, not all."
        ),
    ),
}


# --------------------------------------------------------------------------- errors


@dataclass
class Problem:
    """One thing wrong with the input, located precisely enough to fix it in an editor."""

    file: str
    line: int | None
    field: str
    reason: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line is not None else self.file
        text = f"{where}, field {self.field}: {self.reason}"
        return f"{text}. To fix: {self.fix}" if self.fix else text


class DataFormatError(ValueError):
    """Input that does not fit the conversation schema; ``.problem`` says where and why."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


@dataclass
class LoadResult:
    """What ``load_file`` kept, and what it skipped (only ever non-empty with ``lenient=True``)."""

    conversations: list[dict]
    skipped: list[Problem] = field(default_factory=list)

    def summary(self, name: str) -> str:
        lines = [f"{name}: kept {len(self.conversations)} conversation(s), skipped {len(self.skipped)}"]
        lines += [f"  - {problem}" for problem in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def validate_conversation(conv, where: str = "conversation", line: int | None = None,
                          message_lines: list[int] | None = None) -> dict:
    """Check one conversation against the schema and return it unchanged.

    ``where`` names the file (or the source) and ``line`` the line the conversation
    starts on; ``message_lines`` gives each message's own line when the format has
    one message per line (CSV, TXT), so that an error points at the exact line.
    Later notebooks call this too, so every stage trusts the same rules.
    """

    def fail(field_name: str, reason: str, fix: str, index: int | None = None) -> None:
        at = message_lines[index] if message_lines and index is not None else line
        raise DataFormatError(Problem(where, at, field_name, reason, fix))

    if not isinstance(conv, dict):
        fail("(conversation)", f"expected an object with a 'messages' list, found {type(conv).__name__}",
             'write each conversation as {"messages": [{"role": "user", "content": "..."}, ...]}')
    for key in ("id", "source", "license"):
        if key in conv and not isinstance(conv[key], str):
            fail(key, f"must be a string, found {type(conv[key]).__name__}", f'write it in quotes, e.g. "{key}": "..."')
    messages = conv.get("messages")
    if not isinstance(messages, list):
        fail("messages", "missing or not a list", 'add "messages": [{"role": "user", "content": "..."}, ...]')
    if not messages:
        fail("messages", "the conversation has no turns", "add at least one user message, or remove the conversation")

    expected = "user"
    for i, message in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            fail(name, f"expected an object, found {type(message).__name__}",
                 'write each turn as {"role": "user", "content": "..."}', i)
        role = message.get("role")
        if role not in ROLES:
            found = "missing" if role is None else f"{role!r} is not a role"
            fail(f"{name}.role", f"{found} (allowed: {', '.join(ROLES)})",
                 "use one of the allowed roles", i)
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            found = "missing" if content is None else ("not a string" if not isinstance(content, str) else "empty")
            fail(f"{name}.content", f"content is {found}", "give every turn some text, or remove the turn", i)
        if role == "system":
            if i != 0:
                fail(f"{name}.role", "a system message can only be the first message",
                     "move it to the start, or make it a user turn", i)
            continue
        if role != expected:
            fail(f"{name}.role", f"expected {expected!r} here but found {role!r}: turns must alternate "
                 "user/assistant, starting with user",
                 "merge consecutive messages of one speaker into one turn, or add the missing turn", i)
        expected = "assistant" if role == "user" else "user"
    if expected == "user" and len(messages) == 1:  # the loop ended on a lone system message
        fail("messages", "the conversation has only a system message", "add the user's first turn after it")
    return conv


def _normalise(record: dict, default_id: str, default_source: str) -> dict:
    """Keep only the schema's keys and fill the optional ones, so every dataset row has the same columns."""
    return {
        "id": record.get("id", default_id),
        "source": record.get("source", default_source),
        "license": record.get("license", "unspecified"),
        "messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]],
    }


# --------------------------------------------------------------------------- embedded chats


def _chitchat_path() -> Path:
    import chitchat_dataset

    return Path(chitchat_dataset.__file__).parent / "dataset.json"


def load_chitchat_raw() -> dict:
    """The embedded file as published: conversation id -> {"messages": groups, "ratings", "start", "prompt"}."""
    return json.loads(_chitchat_path().read_text(encoding="utf-8"))


def chitchat_to_conversation(conv_id: str, record: dict) -> dict:
    """Map one chitchat record onto the schema.

    The two people become ``user`` (whoever writes first) and ``assistant``.
    Consecutive messages of one person become one turn (joined by newlines),
    because a chat model answers a whole turn, not every line someone typed.
    Empty messages (33 in the file) are dropped before merging.
    """
    lines = [m for group in record["messages"] for m in group if m["text"].strip()]
    first_sender = lines[0]["sender"] if lines else None
    turns: list[dict] = []
    for message in lines:
        role = "user" if message["sender"] == first_sender else "assistant"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + message["text"]
        else:
            turns.append({"role": role, "content": message["text"]})
    return {"id": conv_id, "source": CHITCHAT, "license": SOURCES[CHITCHAT].license, "messages": turns}


def load_chitchat(max_conversations: int | None = None) -> list[dict]:
    """Every embedded chat in the schema, sorted by id so that the first N are the same on every machine."""
    raw = load_chitchat_raw()
    ids = sorted(raw)[:max_conversations]
    conversations = [chitchat_to_conversation(i, raw[i]) for i in ids]
    return [validate_conversation(c, where=CHITCHAT) for c in conversations if c["messages"]]


# --------------------------------------------------------------------------- hub datasets


def _rank_key(row: dict, position: int) -> tuple:
    """Best reply first: rank 0 is best; unranked replies come after ranked ones, in table order."""
    rank = row.get("rank")
    return (rank is None, rank if rank is not None else 0, position)


def flatten_message_tree(rows: list[dict], source: str = OASST1, license: str = "Apache-2.0",
                         lang: str | None = "en") -> list[dict]:
    """Turn oasst-style message trees into conversations: each root prompt plus its best-ranked reply chain.

    A tree has many branches (several replies to one prompt). Taking every
    root-to-leaf path would repeat the same prompt and early turns in many
    conversations, so a split by conversation would leak text from train into
    test. One chain per tree avoids that, and following the best-ranked reply
    keeps the replies people judged best.

    ``rows`` are dicts with ``message_id``, ``parent_id`` (None for a root),
    ``text`` and ``role`` ("prompter" or "assistant"), and optionally ``lang``,
    ``rank``, ``deleted`` and ``review_result``. Messages in another language,
    deleted ones and those that failed review are left out (with their replies).
    """
    kept = [
        (position, row) for position, row in enumerate(rows)
        if (lang is None or row.get("lang") == lang)
        and not row.get("deleted") and row.get("review_result") is not False
    ]
    children = defaultdict(list)
    for position, row in kept:
        children[row["parent_id"]].append((position, row))

    conversations = []
    for _, root in children[None]:
        messages, node = [], root
        while node is not None:
            role = "user" if node["role"] == "prompter" else node["role"]
            messages.append({"role": role, "content": node["text"]})
            replies = children.get(node["message_id"], [])
            node = min(replies, key=lambda pr: _rank_key(pr[1], pr[0]))[1] if replies else None
        conversations.append({"id": root["message_id"], "source": source, "license": license, "messages": messages})
    return conversations


OASST_COLUMNS = ("message_id", "parent_id", "text", "role", "lang", "rank", "deleted", "review_result")


def load_hub_conversations(name: str = OASST1, max_conversations: int | None = None, lang: str = "en") -> list[dict]:
    """Load an oasst-shaped message-tree dataset (from the hub: online) and flatten it.

    ``name``: a hub name (downloaded, or read from the hub cache), or a local folder
    in one of the hub's own formats: a dataset repository's data files (``data/train-*.parquet``,
    ``.jsonl``, ...) or a folder written by ``datasets``' ``save_to_disk``. The tests run
    this same function on such folders, offline.
    Every split of the dataset is read: we make our own split by
    conversation later, the same way for every source.
    """
    import datasets

    name = str(name)  # a Path works too
    local = Path(name).is_dir()
    if local and any((Path(name) / marker).exists() for marker in ("dataset_dict.json", "state.json")):
        saved = datasets.load_from_disk(name)  # save_to_disk's folder, which load_dataset does not read
        hub = saved if isinstance(saved, datasets.DatasetDict) else {"train": saved}
    else:
        hub = datasets.load_dataset(name)
    rows = []
    for split in hub.values():
        missing = {"message_id", "parent_id", "text", "role"} - set(split.column_names)
        if missing:
            raise DataFormatError(Problem(name, None, ", ".join(sorted(missing)), "column(s) missing",
                                          "use a message-tree dataset shaped like OpenAssistant/oasst1"))
        rows += split.select_columns([c for c in OASST_COLUMNS if c in split.column_names]).to_list()
    info = SOURCES.get(name)
    license = info.license if info else f"see {name}" if local else f"see https://huggingface.co/datasets/{name}"
    conversations = flatten_message_tree(rows, source=name, license=license, lang=lang)[:max_conversations]
    return [validate_conversation(c, where=name) for c in conversations]


def load_conversations(hub_dataset: str | None = None, online: bool = False,
                       max_conversations: int | None = None) -> list[dict]:
    """The embedded chats, plus a hub dataset when one is asked for and the hub can be reached.

    Offline (or when the download fails) the course goes on with the embedded
    chats alone and says so: the same notebook runs on a laptop and on Colab.
    ``max_conversations`` caps each source.
    """
    conversations = load_chitchat(max_conversations)
    if not hub_dataset:
        return conversations
    if not online:
        print(f"Offline: {hub_dataset} cannot be downloaded, so we use only the embedded "
              f"{CHITCHAT} ({len(conversations):,} conversations).")
        return conversations
    try:
        hub = load_hub_conversations(hub_dataset, max_conversations)
    except (OSError, ConnectionError, ValueError) as error:  # network, hub or format trouble
        print(f"Could not load {hub_dataset} ({type(error).__name__}: {error}); "
              f"going on with the embedded {CHITCHAT} only.")
        return conversations
    print(f"Added {len(hub):,} conversations from {hub_dataset}.")
    return conversations + hub


# --------------------------------------------------------------------------- the learner's own files


def _read_text(path: Path) -> str:
    """Decode UTF-8 (a BOM, as Excel writes, is fine); name the line and byte offset when it is not."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataFormatError(Problem(
            path.name, line, "(encoding)",
            f"byte 0x{data[error.start]:02x} at byte offset {error.start} is not valid UTF-8",
            "re-save the file as UTF-8 (in most editors: Save As, encoding UTF-8)")) from None
    if not text.strip():
        raise DataFormatError(Problem(path.name, 1, "(file)", "the file is empty",
                                      "add at least one conversation; data/fixtures/ has an example of each format"))
    return text


def _read_jsonl(path: Path, text: str):
    """One conversation per line, blank lines allowed (``utils.io.parse_jsonl``); a broken line is yielded as a Problem."""
    for number, record in parse_jsonl(text):
        if isinstance(record, json.JSONDecodeError):
            record = Problem(path.name, number, "(json)", f"not valid JSON: {record.msg} at column {record.colno}",
                             'write one complete JSON object per line, e.g. '
                             '{"messages": [{"role": "user", "content": "hi"}]}')
        yield record, number, None


def _read_json(path: Path, text: str):
    """A JSON list of conversations. Each element is decoded on its own so that errors know its line."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def bad(pos: int, reason: str) -> DataFormatError:
        return DataFormatError(Problem(path.name, line_of(pos), "(json)", reason,
                                       'the file must be one JSON list: [{"messages": [...]}, ...]'))

    pos = whitespace.match(text).end()
    if text[pos:pos + 1] != "[":
        raise bad(pos, "expected a list of conversations starting with '['")
    pos = whitespace.match(text, pos + 1).end()
    if text[pos:pos + 1] == "]":
        raise DataFormatError(Problem(path.name, line_of(pos), "(file)", "the list is empty",
                                      "add at least one conversation"))
    while True:
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            raise bad(error.pos, f"not valid JSON: {error.msg}") from None
        yield record, line_of(pos), None
        pos = whitespace.match(text, end).end()
        if text[pos:pos + 1] == "]":
            return
        if text[pos:pos + 1] != ",":
            raise bad(pos, "expected ',' or ']' after a conversation")
        pos = whitespace.match(text, pos + 1).end()


CSV_COLUMNS = ("conversation_id", "role", "content")


def _read_csv(path: Path, text: str):
    """Columns conversation_id, role, content; one row per turn, rows in conversation order."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataFormatError(Problem(path.name, 1, "(header)", f"missing column(s) {', '.join(missing)}",
                                      f"start the file with the header line {','.join(CSV_COLUMNS)}"))
    conversations: dict[str, tuple[list, list]] = {}
    row_start = reader.line_num + 1
    for row in reader:
        conv_id = (row["conversation_id"] or "").strip()
        if not conv_id:
            raise DataFormatError(Problem(path.name, row_start, "conversation_id", "empty",
                                          "give every row the id of the conversation it belongs to"))
        messages, lines = conversations.setdefault(conv_id, ([], []))
        messages.append({"role": (row["role"] or "").strip().lower() or None, "content": row["content"]})
        lines.append(row_start)
        row_start = reader.line_num + 1  # a quoted field can span lines: the next row starts after this one
    for conv_id, (messages, lines) in conversations.items():
        yield {"id": conv_id, "messages": messages}, lines[0], lines


TXT_SPEAKER = re.compile(r"^\s*([A-Za-z]+)\s*:\s?(.*)$")


def _read_txt(path: Path, text: str):
    """Blank lines separate conversations; every other line is ``User: ...``, ``Assistant: ...`` or ``System: ...``.

    One line is one message. A line without a speaker prefix is an error rather
    than a continuation of the previous message, so a typo such as ``Asistant:``
    can never be glued silently onto someone else's turn. (Messages that span
    lines belong in .jsonl or .csv.)
    """
    block: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines() + [""], start=1):
        if raw.strip():
            block.append((number, raw))
            continue
        if block:
            messages, lines = [], []
            for line_number, line in block:
                match = TXT_SPEAKER.match(line)
                if not match:
                    messages = Problem(path.name, line_number, "speaker", "the line has no 'Speaker:' prefix",
                                       "start every line with User:, Assistant: or System: (one message per line)")
                    break
                messages.append({"role": match.group(1).lower(), "content": match.group(2)})
                lines.append(line_number)
            yield (messages if isinstance(messages, Problem) else {"messages": messages}), block[0][0], lines
            block = []


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".txt": _read_txt}


def load_file(path, lenient: bool = False) -> LoadResult:
    """Load your own conversations from a .jsonl, .json, .csv or .txt file (see data/fixtures/ for each).

    Strict by default: the first problem raises ``DataFormatError`` with the
    file, line and field. With ``lenient=True`` bad conversations are skipped,
    listed in ``LoadResult.skipped`` and summarised in a printed report; only
    problems with the whole file (empty, not UTF-8, broken JSON list or CSV
    header) still raise.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataFormatError(Problem(path.name, None, "(file extension)", f"{path.suffix or 'no extension'} is not supported",
                                      f"save the file as one of {', '.join(FILE_FORMATS)}"))
    text = _read_text(path)
    result = LoadResult(conversations=[])
    for record, line, message_lines in reader(path, text):  # problems with the whole file raise here
        try:
            if isinstance(record, Problem):
                raise DataFormatError(record)
            validate_conversation(record, where=path.name, line=line, message_lines=message_lines)
        except DataFormatError as error:
            if not lenient:
                raise
            result.skipped.append(error.problem)
            continue
        result.conversations.append(_normalise(record, f"{path.stem}-{line}", path.name))
    if not result.conversations and not result.skipped:
        raise DataFormatError(Problem(path.name, 1, "(file)", "no conversations found",
                                      "data/fixtures/ has an example of each format"))
    if result.skipped:
        print(result.summary(path.name))
    return result


# --------------------------------------------------------------------------- splits


def split_conversations(conversations: list[dict], seed: int,
                        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[dict]]:
    """Shuffle whole conversations with ``seed`` and cut them into train / validation / test.

    We split by conversation, never by turn: turns of one chat share topic,
    names and phrasing, so spreading them over splits would let the model see
    test text while training and make the evaluation look better than it is.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers that sum to 1, got {fractions}")
    duplicates = [i for i, n in Counter(c["id"] for c in conversations).items() if n > 1]
    if duplicates:
        raise ValueError(f"conversation ids must be unique so that no conversation lands in two splits; "
                         f"repeated: {duplicates[:5]}")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_validation = round(fractions[1] * len(order))
    cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_validation],
            "test": order[n_train + n_validation:]}
    return {name: [conversations[i] for i in cuts[name]] for name in SPLIT_NAMES}


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features({"id": text, "source": text, "license": text,
                              "messages": datasets.List({"role": text, "content": text})})


def save_splits(splits: dict[str, list[dict]], folder) -> Path:
    """Save the splits as a ``datasets.DatasetDict`` in ``folder``, replacing what was there.

    We write into a temporary folder beside it and then swap, so a run that
    stops half-way never leaves a half-written dataset for notebook 02.
    """
    import datasets

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    columns = ("id", "source", "license", "messages")
    dataset = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({c: [conv[c] for conv in rows] for c in columns}, features=_features())
        for name, rows in splits.items()
    })
    fresh, old = folder.with_name(f".{folder.name}.writing"), folder.with_name(f".{folder.name}.old")
    for leftover in (fresh, old):  # from a run that was interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per tiny split is noise in a notebook
    try:
        dataset.save_to_disk(str(fresh))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_saved_splits(folder):
    """The ``DatasetDict`` that ``save_splits`` wrote."""
    import datasets

    return datasets.load_from_disk(str(folder))


def splits_folder(cfg) -> Path:
    return cfg.paths.processed / "conversations"


def build_splits(cfg):
    """Notebook 01 in one call: load (hub data when online and the profile asks), split, save, card.

    Returns the saved ``DatasetDict``; ``load_splits`` calls this when 01 has not run.
    """
    conversations = load_conversations(cfg.profile.hub_dataset, cfg.online, cfg.profile.max_conversations)
    splits = split_conversations(conversations, seed=cfg.seed)
    folder = save_splits(splits, splits_folder(cfg))
    sources = sorted({c["source"] for c in conversations})
    write_atomically(cfg.paths.processed / "DATASET_CARD.md", dataset_card(splits, sources))
    return load_saved_splits(folder)


def load_splits(cfg):
    """The splits notebook 01 saved for this profile, rebuilt (with a message) when they are missing."""
    folder = splits_folder(cfg)
    if not (folder / "dataset_dict.json").exists():
        print(f"No saved conversations for profile {cfg.profile.name!r} yet: running notebook 01's "
              "pipeline (utils.data.build_splits) now.")
        return build_splits(cfg)
    return load_saved_splits(folder)


# --------------------------------------------------------------------------- statistics and the dataset card


def lengths_frame(conversations: list[dict]):
    """One row per turn (id, turn, role, words, characters): the table every length plot starts from."""
    import pandas as pd

    rows = [
        {"id": c["id"], "source": c["source"], "turn": t, "role": m["role"],
         "words": len(m["content"].split()), "characters": len(m["content"])}
        for c in conversations for t, m in enumerate(c["messages"])
    ]
    return pd.DataFrame(rows, columns=["id", "source", "turn", "role", "words", "characters"])


def conversation_stats(conversations: list[dict]) -> dict:
    """Size and shape of a set of conversations, the figures a dataset card and the report card quote."""
    turns = [len(c["messages"]) for c in conversations]
    words = [len(m["content"].split()) for c in conversations for m in c["messages"]]
    roles = Counter(m["role"] for c in conversations for m in c["messages"])
    return {
        "conversations": len(conversations),
        "turns": sum(turns),
        "words": sum(words),
        "characters": sum(len(m["content"]) for c in conversations for m in c["messages"]),
        "mean_turns_per_conversation": round(statistics.fmean(turns), 2) if turns else 0.0,
        "median_turns_per_conversation": statistics.median(turns) if turns else 0,
        "mean_words_per_turn": round(statistics.fmean(words), 2) if words else 0.0,
        "role_counts": {role: roles[role] for role in ROLES},
    }


def dataset_card(conversations_by_split: dict[str, list[dict]], sources: list[str]) -> str:
    """A dataset card in Markdown: what the data is, where it came from, under which licence, and its risks.

    Writing it down is part of collecting data: whoever trains on it later
    (including you, in notebook 08) needs to know what it may and may not be used for.
    """
    everything = [c for rows in conversations_by_split.values() for c in rows]
    stats = conversation_stats(everything)
    per_source = Counter(c["source"] for c in everything)
    infos = [SOURCES.get(name) or SourceInfo(
        name=name, license=", ".join(sorted({c["license"] for c in everything if c["source"] == name})) or "unspecified",
        url="(your own file)", language="as written", how_collected="Your own conversations, loaded with `load_file`.",
        known_issues="Check you may use them, and remove personal details of anyone in them.") for name in sources]

    lines = ["# Dataset card: course conversations", "", "## Sources", "",
             "| source | conversations | licence | language | link |", "|---|---:|---|---|---|"]
    lines += [f"| {i.name} | {per_source[i.name]:,} | {i.license} | {i.language} | {i.url} |" for i in infos]
    lines += ["", "## Size", "",
              f"{stats['conversations']:,} conversations, {stats['turns']:,} turns, {stats['words']:,} words, "
              f"{stats['characters']:,} characters; {stats['mean_turns_per_conversation']} turns per conversation "
              f"(median {stats['median_turns_per_conversation']}), {stats['mean_words_per_turn']} words per turn.",
              "", "## Splits", "", "| split | conversations | turns |", "|---|---:|---:|"]
    lines += [f"| {name} | {len(rows):,} | {sum(len(c['messages']) for c in rows):,} |"
              for name, rows in conversations_by_split.items()]
    lines += ["", "Split by conversation with a fixed seed: no conversation is in two splits.",
              "", "## How it was collected", ""]
    lines += [f"- **{i.name}**: {i.how_collected}" for i in infos]
    lines += ["", "## Known issues", ""]
    lines += [f"- **{i.name}**: {i.known_issues}" for i in infos]
    lines += ["", "## Intended use", "",
              "Teaching: training and evaluating a small chat model in this course. Not for a product: "
              "the data is small, informal and unfiltered for toxicity (notebook 08 audits it).", ""]
    return "\n".join(lines)
