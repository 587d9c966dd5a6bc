"""Writing files so that nothing is ever half-written, and reading JSON Lines with errors that say where.

Every file the course writes (checkpoints, token ids, report figures, metrics)
goes through ``write_atomically``: the bytes go to a temp file in the same
folder, then ``os.replace`` renames it over the target. A rename inside one
folder is atomic, so a crash or Ctrl-C leaves either the old file or the new
one, never a mix; the temp file is removed when writing fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` (a writer that wants a file name, e.g. ``safetensors.save_file``), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomically(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` in one step."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return write_with(path, lambda tmp: Path(tmp).write_bytes(payload))


def write_json_atomically(path: str | os.PathLike, payload) -> Path:
    """``payload`` as indented JSON (numbers and paths that JSON lacks become strings)."""
    return write_atomically(path, json.dumps(payload, indent=2, default=str))


def parse_jsonl(text: str) -> Iterator[tuple[int, object]]:
    """``(line_number, value)`` for every non-blank line of JSON Lines text.

    A line that is not JSON gives its ``json.JSONDecodeError`` as the value instead of
    raising, so each caller picks what a broken line means: ``read_jsonl`` stops there,
    ``utils.data.load_file(lenient=True)`` reports the line and reads on.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            value = error
        yield number, value


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line_number, record)`` for every non-blank line of a JSON Lines file.

    A line that is not JSON, or not a JSON object, raises ``ValueError`` naming the
    file and the line, so the learner can open the file at that line and fix it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}); save the file as UTF-8.") from None
    for number, record in parse_jsonl(text):
        if isinstance(record, json.JSONDecodeError):
            raise ValueError(f"{path}, line {number}: not valid JSON ({record.msg}, column {record.colno}).")
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object ({{...}}), got {type(record).__name__}.")
        yield number, record
