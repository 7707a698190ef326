"""The performance benchmark: its Ray phase split from timeline markers, and (slow) a real `--quick` run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.benchmarks.perf import Plan, ray_phases, render

REPO_ROOT = Path(__file__).resolve().parents[2]


def marks(*events: tuple[str, float, dict]) -> list[dict]:
    return [{"event": event, "t": t, **fields} for event, t, fields in events]


def test_ray_phases_split_the_timeline_per_stage() -> None:
    timeline = marks(
        ("submit.process", 0.0, {}),
        ("head.start", 1.0, {}),
        ("head.ready", 9.0, {}),
        ("submit.submitted", 10.0, {}),
        ("driver.process", 11.0, {}),
        ("driver.start", 12.5, {}),
        ("stage.start", 13.0, {"stage": "a"}),
        ("worker.start", 16.0, {}),
        ("worker.fit", 17.0, {}),
        ("worker.features", 18.0, {}),
        ("worker.engine", 20.0, {}),
        ("worker.first_step", 21.0, {}),
        ("worker.trained", 31.0, {}),
        ("worker.evaluated", 33.0, {}),
        ("worker.exported", 36.0, {}),
        ("stage.end", 37.0, {"stage": "a"}),
        ("stage.start", 37.5, {"stage": "b"}),
        ("worker.start", 39.0, {}),
        ("worker.first_step", 42.0, {}),
        ("stage.end", 50.0, {"stage": "b"}),
        ("submit.job_ended", 52.0, {}),
        ("head.stop", 52.5, {}),
        ("head.stopped", 53.5, {}),
    )
    phases = ray_phases(timeline, 0.0, 54.0)
    assert phases["head_start_s"] == 8.0 and phases["submit_to_driver_s"] == 1.0 and phases["head_stop_s"] == 1.0
    assert phases["submit_to_first_step_s"] == 11.0 and phases["command_to_first_step_s"] == 21.0
    assert phases["job_end_to_submitter_s"] == 2.0
    first, second = phases["stages"]
    assert (first["stage"], first["worker_group_s"], first["setup_s"], first["export_mlflow_s"]) == ("a", 3.0, 8.0, 3.0)
    assert (second["stage"], second["setup_s"], second["model_engine_s"]) == ("b", 4.5, None)  # marks it lacks


def test_report_renders_what_ran_and_names_failures() -> None:
    result = {
        "command": "python -m ray_jobs.benchmarks.perf --quick",
        "wall_s": 120.0,
        "machine": "2 CPU cores",
        "batch": 16,
        "input_length": 96,
        "target_length": 8,
        "plan": Plan.build(True).__dict__,
        "steps": [{"shape": "t5-tiny", "error": "exit 1: boom"}],
        "memory": [],
        "hf": None,
        "eval": [],
        "ray": {"error": "exit 2: no head"},
    }
    text = render(result)
    assert "error: 'exit 1: boom'" in text and "The Ray run failed" in text


@pytest.mark.slow
def test_quick_benchmark_measures_every_part(tmp_path: Path) -> None:
    """About 3 minutes on an idle 2-core machine; the timeout is a safety net. Checks that each part measured
    something (figures, not speed: speed targets live in the report)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ray_jobs.benchmarks.perf", "--quick", "--out", str(tmp_path / "perf")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "perf" / "results.json").read_text())
    [tiny] = result["steps"]
    assert "error" not in tiny, tiny
    assert {loop["loop"] for loop in tiny["loops"]} == {"zero1", "zero2", "zero3"}
    assert all(loop["vs_ddp"] > 0 and loop["samples_per_s"] > 0 for loop in tiny["loops"])
    assert all(row["ranks"][0]["peak_rss_mb"] > 0 for row in result["memory"]), result["memory"]
    assert [ev["method"] for ev in result["eval"]] == ["ft_io", "ft_iro"]
    ray = result["ray"]
    assert "error" not in ray, ray
    assert len(ray["stages"]) == 2 and all(stage["setup_s"] > 0 for stage in ray["stages"])
    assert ray["head_stop_s"] is not None and ray["submit_to_first_step_s"] > 0
    text = (tmp_path / "perf" / "results.md").read_text()
    assert "## Strategy vs plain DDP" in text and "## Ray overhead" in text
