"""Streaming JSONL(.gz) reading that reports the file and line of a bad row."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from trainer.data.example import DataError, QAExample


def open_text(path: Path) -> TextIO:
    """A whole-document reader (JSON arrays); line-oriented reading goes through iter_json_rows."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def iter_json_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded row), skipping blank lines; malformed JSON raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    line_no = 0
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
        lines = iter(handle)  # bytes, decoded per line: a bad byte is reported on its own line
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip
                raise DataError(f"{path}:{line_no + 1}: unreadable (corrupt or truncated gzip?): {exc}") from None
            line_no += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON: {exc.msg} (column {exc.colno})") from None


def read_examples(path: str | Path) -> list[QAExample]:
    """Read a question file in the shared schema; ids must be unique."""
    examples: list[QAExample] = []
    seen: dict[str, int] = {}
    for line_no, row in iter_json_rows(path):
        example = QAExample.from_row(row, where=f"{path}:{line_no}")
        if example.id in seen:
            raise DataError(f"{path}:{line_no}: duplicate id {example.id!r} (first on line {seen[example.id]})")
        seen[example.id] = line_no
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


def write_jsonl_gz(rows: list[dict[str, Any]], path: Path) -> None:
    """Fixed gzip header (no mtime/name) keeps bytes reproducible; tmp + rename so no reader sees half."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
            for row in rows:
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
