"""JSONL parsing errors name file, line and field; gzip is read by magic bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from retrieval_core.documents import MalformedLineError, iter_passages, parse_passage


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"title": "t", "text": "x"}', "missing field 'id'"),
        ('{"id": 5, "title": "t", "text": "x"}', "field 'id' must be a string, got int"),
        ('{"id": " ", "title": "t", "text": "x"}', "field 'id' is empty"),
        ('{"id": "a", "title": "", "text": " "}', "fields 'title' and 'text' are both empty"),
        ('{"id": "a", "title": "t"}', "missing field 'text'"),
    ],
)
def test_parse_passage_names_line_and_field(line: str, reason: str) -> None:
    with pytest.raises(MalformedLineError) as info:
        parse_passage(line, "in.jsonl", 12)
    assert str(info.value).startswith("in.jsonl:12: ")
    assert reason in str(info.value)


def test_iter_passages_reads_gzip_by_magic_and_collects_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.data"  # no .gz suffix on purpose
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"id": "a", "title": "A", "text": "x"}\n\n{broken\n{"id": "b", "title": "B", "text": "y"}\n')
    errors: list[MalformedLineError] = []
    docs = list(iter_passages(path, errors=errors))
    assert [d.id for d in docs] == ["a", "b"]
    assert [e.line_number for e in errors] == [3]
    with pytest.raises(MalformedLineError, match=r"p\.data:3: invalid JSON"):
        list(iter_passages(path))
