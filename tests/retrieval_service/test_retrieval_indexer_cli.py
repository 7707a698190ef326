"""``python -m retrieval_service index`` as users run it: idempotence and malformed-line handling."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_service.settings import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "retrieval_service", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


GOOD = [
    json.dumps({"id": f"k{i}", "title": f"Knowledge {i}", "text": f"fact number {i} about topic"}) for i in range(30)
]


def test_index_twice_changes_nothing(tmp_path: Path) -> None:
    source = write_gz(tmp_path / "knowledge.jsonl.gz", GOOD)
    index = tmp_path / "index"
    first = run_cli("index", "--index", str(index), "--input", str(source), "--no-progress")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["added"] == 30
    before = {p.name: p.stat().st_mtime_ns for p in index.iterdir()}
    second = run_cli("index", "--index", str(index), "--input", str(source), "--no-progress")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert (report["added"], report["updated"], report["unchanged"]) == (0, 0, 30)
    assert {p.name: p.stat().st_mtime_ns for p in index.iterdir()} == before
    with TantivyBackend(index) as backend:
        assert backend.count() == 30


def test_malformed_lines_skipped_with_line_numbers(tmp_path: Path) -> None:
    lines = [GOOD[0], "{oops", GOOD[1], '{"id": "x", "title": 3, "text": "t"}', GOOD[2]]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("index", "--index", str(tmp_path / "i"), "--input", str(source), "--no-progress")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["added"] == 3 and report["malformed"] == 2
    assert report["malformed_lines"][0].startswith(f"{source}:2: invalid JSON")
    assert report["malformed_lines"][1] == f"{source}:4: field 'title' must be a string, got int"
    assert f"{source}:2:" in result.stdout + result.stderr


def test_malformed_line_is_fatal_with_flag_and_commits_nothing(tmp_path: Path) -> None:
    index = tmp_path / "i"
    ok = run_cli("index", "--index", str(index), "--input", str(write_gz(tmp_path / "a.gz", GOOD[:5])), "--no-progress")
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([GOOD[10], GOOD[11], '{"id": "z"}']) + "\n", encoding="utf-8")
    result = run_cli("index", "--index", str(index), "--input", str(bad), "--on-malformed", "fail", "--no-progress")
    assert result.returncode == 2
    assert f"{bad}:3: missing field 'title'" in result.stderr
    with TantivyBackend(index) as backend:
        assert backend.count() == 5


def test_missing_input_file_is_named(tmp_path: Path) -> None:
    result = run_cli("index", "--index", str(tmp_path / "i"), "--input", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert f"input file not found: {tmp_path / 'nope.jsonl'}" in result.stderr
    assert not (tmp_path / "i").exists()


def test_serve_refuses_missing_index(tmp_path: Path) -> None:
    result = run_cli("serve", "--index", str(tmp_path / "absent"), "--port", "1")
    assert result.returncode == 2
    assert "no tantivy index here" in result.stderr
