"""Passage records and the streaming JSONL reader shared by the indexer, the benchmark and the tests."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True, slots=True)
class Document:
    """One knowledge passage; ``id`` is the key, so re-indexing the same id replaces it."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """The one searchable field: title and body, so both backends score the same text."""
        return f"{self.title}\n{self.text}"

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "text": self.text}


@dataclass(frozen=True, slots=True)
class ScoredDocument:
    """A search hit; frozen so the trainer can cache and hash results safely."""

    id: str
    title: str
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text, "score": self.score}


class MalformedLineError(ValueError):
    """A JSONL line that is not a passage; carries the file and line so users can fix the input."""

    def __init__(self, path: str, line_number: int, reason: str) -> None:
        super().__init__(f"{path}:{line_number}: {reason}")
        self.path = path
        self.line_number = line_number
        self.reason = reason


def parse_passage(line: str, path: str = "<input>", line_number: int = 0) -> Document:
    """Parse one JSONL line into a Document, naming the line and the field when it is malformed."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MalformedLineError(
            path, line_number, f"invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(row, dict):
        raise MalformedLineError(path, line_number, f"expected a JSON object, got {type(row).__name__}")
    values: dict[str, str] = {}
    for field in ("id", "title", "text"):
        if field not in row:
            raise MalformedLineError(path, line_number, f"missing field '{field}'")
        value = row[field]
        if not isinstance(value, str):
            raise MalformedLineError(
                path, line_number, f"field '{field}' must be a string, got {type(value).__name__}"
            )
        values[field] = value
    if not values["id"].strip():
        raise MalformedLineError(path, line_number, "field 'id' is empty")
    if not (values["title"].strip() or values["text"].strip()):
        raise MalformedLineError(path, line_number, "fields 'title' and 'text' are both empty")
    return Document(id=values["id"], title=values["title"], text=values["text"])


def open_text(path: str | Path) -> IO[str]:
    """Open plain or gzip JSONL by magic bytes, not by suffix, so renamed files still work."""
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, closed by it
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def iter_passages(path: str | Path, errors: list[MalformedLineError] | None = None) -> Iterator[Document]:
    """Stream passages in constant memory.

    With ``errors`` given, malformed lines are appended there and skipped; without it the first one raises.
    Blank lines are ignored.
    """
    name = str(path)
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield parse_passage(line, name, line_number)
            except MalformedLineError as exc:
                if errors is None:
                    raise
                errors.append(exc)
