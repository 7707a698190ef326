"""The KARD benchmark's task graph: a slot goes to the earliest ready task, and a resumed invocation takes the
runs an interrupted one finished from their logs (trainer.train's last line) instead of running them again."""

import json
import threading
from pathlib import Path
from typing import Any

from ray_jobs.benchmarks.kard_benchmark import Task, run_tasks


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
    done = run_tasks(tasks, {t.name: r for t in tasks if (r := t.finished_result()) is not None})
    assert done["s0/train"]["mlflow_run_id"] == "earlier"  # taken from its log, not run
    assert "s0/train" not in order and sorted(order) == ["s0/eval", "s1/eval", "s1/train"]
    assert order.index("s1/train") < order.index("s1/eval")
