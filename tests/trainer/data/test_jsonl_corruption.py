"""Corrupt data files (truncated gzip, non-UTF-8 bytes, broken rows) fail with file and line, nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.data.example import DataError
from trainer.data.jsonl import read_examples

ROW = {"id": "q", "question": "Is ice cold?", "choices": ["yes", "no"], "answer_index": 0}


def rows(n: int) -> bytes:
    return "".join(json.dumps({**ROW, "id": f"q{i}"}) + "\n" for i in range(n)).encode()


def test_truncated_gzip_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl.gz"
    whole = gzip.compress(rows(2000))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"train.jsonl.gz:\d+: unreadable \(corrupt or truncated gzip\?\)"):
        read_examples(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl.gz"]


def test_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(rows(3) + b'{"id": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:4: not UTF-8 text"):
        read_examples(path)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(junk=st.binary(max_size=200), gz=st.booleans())
def test_any_bytes_read_or_fail_with_a_location(tmp_path_factory: pytest.TempPathFactory, junk: bytes, gz: bool):
    path = tmp_path_factory.mktemp("rows") / ("train.jsonl.gz" if gz else "train.jsonl")
    path.write_bytes(gzip.compress(rows(2) + junk) if gz else rows(2) + junk)
    try:
        read_examples(path)
    except DataError as exc:
        assert str(path) in str(exc)
