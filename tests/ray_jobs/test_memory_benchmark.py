"""The memory benchmark's pieces: the planner's figure for a case, and one real two-rank case (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_jobs.benchmarks.memory_benchmark import Case, format_results, planned, run_case, summarize


def test_planned_figures_follow_the_stage() -> None:
    zero2 = planned(Case("t5-base", 2, 4, 128, 32, steps=1))
    zero3 = planned(Case("t5-base", 3, 4, 128, 32, steps=1))
    assert zero3["model_states_mib"] < zero2["model_states_mib"]  # 20P/2 vs 4P + 16P/2 (fp32)
    assert zero2["activations_mib"] == zero3["activations_mib"]
    assert zero2["planned_mib"] == pytest.approx(zero2["model_states_mib"] + zero2["activations_mib"])


@pytest.mark.slow
def test_one_case_end_to_end(tmp_path: Path) -> None:
    """Two real DeepSpeed ranks (gloo) train t5-tiny for a step; ~1 min, most of it DeepSpeed start-up."""
    case = Case("t5-tiny", 2, 2, 32, 8, steps=1)
    ranks = run_case(case, tmp_path / "case", timeout_s=600)
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["peak_mib"] >= r["steady_mib"] > r["baseline_mib"] for r in ranks)
    row = summarize(case, ranks)
    assert row["measured_peak_added_mib"] > 0 and row["parameters"] > 0
    assert "| t5-tiny ZeRO-2 |" in format_results([row], "python -m ray_jobs.benchmarks.memory_benchmark")
