"""The ``make bench`` entry point at a tiny size: it runs end to end and writes the markdown table."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval_service import benchmark


@pytest.mark.timeout(150)
def test_benchmark_tiny_run_writes_table(tmp_path: Path) -> None:
    code = benchmark.main(
        [
            "--out",
            str(tmp_path / "out"),
            "--passages",
            "600",
            "--no-wiki",
            "--queries",
            "20",
            "--http-requests",
            "40",
            "--rank-bm25-max",
            "300",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    report = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "### Synthetic (Zipf): 600 passages, 20 queries" in report
    assert "| metric | tantivy via HTTP | tantivy in-process | bm25s | rank_bm25 (300 slice) |" in report
    for row in (
        "index build (s)",
        "index size (MB)",
        "RSS serving (MB)",
        "single query p50 / p99 (ms), 8 clients",
        "batch throughput (queries/s)",
        "top-10 agreement with tantivy",
    ):
        assert f"| {row} |" in report
    assert ", 0 errors;" in report


def test_synthetic_corpus_is_deterministic() -> None:
    first = [d.to_dict() for _, d in zip(range(5), benchmark.synthetic_passages(100), strict=False)]
    again = [d.to_dict() for _, d in zip(range(5), benchmark.synthetic_passages(100), strict=False)]
    assert first == again and first[0]["id"] == "syn-0"
