"""The benchmarks' shared harness: a slot goes to the earliest ready task, a resumed invocation takes the runs an
interrupted one finished from their logs (trainer.train's last line) instead of running them again, and `<out>`
is cleared of the benchmark's own artifacts only."""

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ray_jobs.benchmarks.harness import Task, finished_results, prepare_out, run_tasks, timing_line


def _task(name: str, log: Path, order: list[str], lock: threading.Lock, *needs: str) -> Task:
    def run(done: dict[str, dict[str, Any]]) -> dict[str, Any]:
        assert all(n in done for n in needs)
        with lock:
            order.append(name)
        return {"mlflow_run_id": name}

    return Task(name, run, log, needs)


def test_the_earliest_ready_task_goes_first_and_finished_logs_are_not_run_again(tmp_path: Path) -> None:
    order: list[str] = []
    lock = threading.Lock()
    finished_log = tmp_path / "s0-train.log"
    finished_log.write_text("step 600/600 loss 0.1\n" + json.dumps({"mlflow_run_id": "earlier", "metrics": {}}) + "\n")
    torn_log = tmp_path / "s1-train.log"
    torn_log.write_text("step 300/600 loss 0.4\n")  # killed mid-run: no final line
    tasks = [
        _task("s0/train", finished_log, order, lock),
        _task("s0/eval", tmp_path / "s0-eval.log", order, lock, "s0/train"),
        _task("s1/train", torn_log, order, lock),
        _task("s1/eval", tmp_path / "s1-eval.log", order, lock, "s1/train"),
    ]
    assert tasks[0].finished_result() == {"mlflow_run_id": "earlier", "metrics": {}}
    assert tasks[2].finished_result() is None and tasks[1].finished_result() is None
    done = run_tasks(tasks, finished_results(tasks))
    assert done["s0/train"]["mlflow_run_id"] == "earlier"  # taken from its log, not run
    assert "s0/train" not in order and sorted(order) == ["s0/eval", "s1/eval", "s1/train"]
    assert order.index("s1/train") < order.index("s1/eval")


def test_a_task_needing_what_no_task_produces_is_refused_before_anything_runs(tmp_path: Path) -> None:
    order: list[str] = []
    tasks = [_task("s0/eval", tmp_path / "eval.log", order, threading.Lock(), "s0/train")]
    with pytest.raises(ValueError, match=r"tasks need \['s0/train'\], which no task produces"):
        run_tasks(tasks)
    assert order == []


def test_out_is_cleared_of_the_benchmarks_artifacts_unless_resuming(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "results.md").write_text("old")
    (tmp_path / "notes.txt").write_text("not ours")
    prepare_out(tmp_path, ("runs", "results.md"), resume=True)
    assert (tmp_path / "runs").is_dir() and (tmp_path / "results.md").is_file()
    prepare_out(tmp_path, ("runs", "results.md"), resume=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results.md").exists()
    assert (tmp_path / "notes.txt").is_file() and (tmp_path / "logs").is_dir() and (tmp_path / "mlflow.db").is_file()


def test_timing_line_counts_resumed_runs() -> None:
    assert timing_line(90.0, 0).endswith("total wall time 1.5 min, 2 runs at a time.")
    resumed = timing_line(90.0, 3, ", seeds [0]")
    assert resumed.endswith(
        "2 runs at a time, seeds [0]; 3 runs finished by an earlier, interrupted invocation (`--resume`)."
    )
