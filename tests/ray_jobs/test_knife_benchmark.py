"""The KNIFE benchmark at smoke size: real `trainer.train` subprocesses, a real MLflow store, real report files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.tracking.compare import KNIFE_METHODS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "knife"
    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.benchmarks.knife_benchmark", "--out", str(out), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "accuracy.png").stat().st_size > 0

    report = (out / "results.md").read_text()
    table = report.split("## Results (from the MLflow store)")[1]
    for method in KNIFE_METHODS:
        assert f"| {method} | " in table and f"| {method} | – |" not in table
    assert "KNIFE student − I→O" in report and "## Reading" in report

    results = json.loads((out / "results.json").read_text())
    per_seed = results["per_seed_accuracy"]["synthetic"]
    assert set(per_seed) == set(KNIFE_METHODS)
    assert all(set(seeds) == {"0"} and 0.0 <= seeds["0"] <= 1.0 for seeds in per_seed.values())
    assert len(results["runs"]) == len(KNIFE_METHODS) and all(r["steps"] == 24 for r in results["runs"])
    diff = results["knife_student_minus_ft_io"]["synthetic"]
    assert diff["per_seed"]["0"] == pytest.approx(per_seed["knife_student"]["0"] - per_seed["ft_io"]["0"])
    assert results["budget"]["datasets"]["synthetic"]["max_steps"] == 24
