"""The performance benchmark: its Ray phase split from timeline markers, the median run, the import probe, the
report with its start-up targets, and (slow) a real `--quick` run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.benchmarks.perf import HEAVY_MODULES, Plan, median_run, ray_phases, run_child, time_import
from ray_jobs.benchmarks.perf_report import main as report_main
from ray_jobs.benchmarks.perf_report import render

REPO_ROOT = Path(__file__).resolve().parents[2]


def marks(*events: tuple[str, float, dict]) -> list[dict]:
    return [{"event": event, "t": t, **fields} for event, t, fields in events]


def test_ray_phases_split_the_timeline_per_stage() -> None:
    """Stages a and b share one worker group (its start counts in a's set-up); c opens a second group."""
    timeline = marks(
        ("submit.process", 0.0, {}),
        ("head.start", 1.0, {}),
        ("head.ready", 9.0, {}),
        ("submit.submitted", 10.0, {}),
        ("driver.process", 11.0, {}),
        ("driver.start", 12.5, {}),
        ("group.start", 13.0, {}),
        ("worker.start", 16.0, {}),
        ("stage.start", 16.5, {"stage": "a"}),
        ("worker.fit", 17.0, {}),
        ("worker.features", 18.0, {}),
        ("worker.engine", 20.0, {}),
        ("worker.first_step", 21.0, {}),
        ("worker.trained", 31.0, {}),
        ("worker.evaluated", 33.0, {}),
        ("worker.exported", 36.0, {}),
        ("stage.end", 37.0, {"stage": "a"}),
        ("stage.start", 37.5, {"stage": "b"}),
        ("worker.fit", 37.6, {}),
        ("worker.first_step", 40.0, {}),
        ("stage.end", 45.0, {"stage": "b"}),
        ("group.end", 47.0, {}),
        ("group.start", 47.5, {}),
        ("worker.start", 55.0, {}),
        ("stage.start", 55.5, {"stage": "c"}),
        ("worker.first_step", 58.0, {}),
        ("stage.end", 60.0, {"stage": "c"}),
        ("group.end", 61.0, {}),
        ("submit.job_ended", 62.0, {}),
        ("head.stop", 62.5, {}),
        ("head.stopped", 63.5, {}),
    )
    phases = ray_phases(timeline, 0.0, 64.0)
    assert phases["head_start_s"] == 8.0 and phases["submit_to_driver_s"] == 1.0 and phases["head_stop_s"] == 1.0
    assert phases["submit_to_first_step_s"] == 11.0 and phases["command_to_first_step_s"] == 21.0
    assert phases["driver_to_first_stage_s"] == 0.5 and phases["job_end_to_submitter_s"] == 1.0
    a, b, c = phases["stages"]
    assert (a["stage"], a["worker_group_s"], a["process_group_s"], a["setup_s"]) == ("a", 3.0, 0.5, 8.0)
    assert (a["export_mlflow_s"], a["teardown_s"], a["stage_s"]) == (3.0, 1.0, 24.0)
    assert (b["worker_group_s"], b["setup_s"], b["teardown_s"], b["stage_s"]) == (0.0, 2.5, None, 9.5)
    assert b["model_engine_s"] is None  # a mark it lacks
    assert (c["worker_group_s"], c["setup_s"], c["stage_s"]) == (7.5, 10.5, 13.5)


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
        "ray": {"shared_workers": {"error": "exit 2: no head"}},
    }
    text = render(result)
    assert "error: 'exit 1: boom'" in text and "The Ray run failed" in text


def test_median_run_keeps_the_middle_submission_and_counts_failures_as_slowest() -> None:
    runs = [
        {"submit_to_first_step_s": 30.0, "id": "a"},
        {"error": "exit 1"},
        {"submit_to_first_step_s": 18.0, "id": "c"},
    ]
    chosen = median_run(runs)
    assert chosen["id"] == "a"  # sorted: c (18), a (30), the failure
    assert chosen["submit_to_first_step_rounds"] == [30.0, None, 18.0] and chosen["failed_rounds"] == 1
    assert median_run([{"error": "exit 2"}]) == {"error": "exit 2"}


def test_import_probe_times_a_statement_in_a_fresh_interpreter() -> None:
    seconds, loaded = time_import("import json", ("json", "mlflow"))
    assert 0 <= seconds < 5 and loaded == {"json": True, "mlflow": False}


def test_report_states_both_start_up_targets_with_the_load_average(tmp_path: Path) -> None:
    result = {
        "command": "python -m ray_jobs.benchmarks.perf --parts imports,ray",
        "wall_s": 60.0,
        "machine": "2 CPU cores",
        "batch": 16,
        "input_length": 96,
        "target_length": 8,
        "plan": Plan.build(True).__dict__,
        "imports": {
            "baseline": "import torch, transformers",
            "loop": "import trainer.loop",
            "rounds": 3,
            "baseline_rounds": [2.0, 2.1, 1.9],
            "loop_rounds": [2.4, 2.5, 2.3],
            "baseline_s": 2.0,
            "loop_s": 2.4,
            "ratio": 1.2,
            "loop_loads": dict.fromkeys(HEAVY_MODULES, False),
            "load_average": [1.5, 1.0, 0.5],
        },
        "steps": [],
        "memory": [],
        "hf": None,
        "eval": None,
        "ray": {"shared_workers": {"error": "exit 2: no head"}},
    }
    text = render(result)
    assert "| 1.20× (2.40 s vs 2.00 s, medians of 3) | **met** | load 1.5 / 1.0 / 0.5 |" in text
    assert "submit → first training step ≤ 20 s (local head, shared worker group) | — | not measured" in text
    (tmp_path / "results.json").write_text(json.dumps(result))
    report_main([str(tmp_path / "results.json")])  # the report is redone from the saved results alone
    assert (tmp_path / "results.md").read_text() == text


def test_a_child_past_its_time_gets_sigterm_to_clean_up(tmp_path: Path) -> None:
    """What lets a timed-out submitter stop its local Ray head (SIGKILL would orphan it). The child starts in
    ~0.1 s and never ends by itself; 5 s is its time."""
    marker = tmp_path / "cleaned-up"
    child = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').close(), sys.exit(143)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(3600)\n"
    )
    code, output = run_child([sys.executable, "-c", child], 5, stdout=subprocess.PIPE)
    assert code is None and output == "ready\n" and marker.is_file()


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
    imports = result["imports"]
    assert imports["rounds"] == 3 and imports["baseline_s"] > 0 and imports["ratio"] > 0, imports
    assert set(result["ray"]) == {"shared_workers", "worker_group_per_stage"}
    for ray in result["ray"].values():
        assert "error" not in ray, ray
        assert len(ray["stages"]) == 2 and all(stage["setup_s"] > 0 for stage in ray["stages"])
        assert ray["head_stop_s"] is not None and ray["submit_to_first_step_s"] > 0
    shared = result["ray"]["shared_workers"]["stages"]
    assert shared[0]["worker_group_s"] > 0 and shared[1]["worker_group_s"] == 0  # the second stage reused it
    text = (tmp_path / "perf" / "results.md").read_text()
    assert "## Start-up targets" in text and "## Strategy vs plain DDP" in text and "## Ray overhead" in text
