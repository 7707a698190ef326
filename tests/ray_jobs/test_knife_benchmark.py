"""The KNIFE benchmark: its paired statistics on hand-made numbers, and the whole benchmark at smoke size (real
`trainer.train` subprocesses, a real MLflow store, real report files)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ray_jobs.benchmarks.knife_benchmark import (
    EXPERIMENT,
    KNIFE_METHODS,
    LABELS,
    TEACHER,
    Job,
    PairedDifference,
    finished_results,
    plan_jobs,
    run_all,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_paired_difference_has_a_t_interval_over_seeds() -> None:
    diff = PairedDifference.of({0: 0.1, 1: 0.2, 2: 0.3})
    assert diff.mean == pytest.approx(0.2) and diff.std == pytest.approx(0.1)
    half = 4.302653 * 0.1 / 3**0.5  # t(0.975, df=2)
    assert diff.ci95 == pytest.approx((0.2 - half, 0.2 + half), abs=1e-6)
    assert diff.cell() == "+0.200 [-0.048, +0.448]"
    assert "contains 0" in diff.verdict()
    assert "above 0" in PairedDifference.of({0: 0.1, 1: 0.12, 2: 0.11, 3: 0.1, 4: 0.13}).verdict()
    assert "below 0" in PairedDifference.of({0: -0.2, 1: -0.21, 2: -0.2}).verdict()
    single = PairedDifference.of({3: 0.05})
    assert single.ci95 is None and single.cell() == "+0.050 (1 seed, no interval)"


def test_resume_reuses_finished_runs_and_runs_only_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted benchmark's finished runs are read back from their logs (trainer.train's last line, with the
    MLflow run's duration) and not run again; a run killed mid-way is run again."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment, start_time=1_000_000)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=1_042_000)
    jobs = plan_jobs([Job("synthetic", TEACHER, 0, ())], tmp_path, [])
    teacher, ft_io = jobs[0], next(j for j in jobs if j.method == "ft_io")
    (tmp_path / "logs").mkdir()
    metrics = {"dev/accuracy": 1.0, "dev/generation_accuracy": 0.5, "dev/unparsed_rate": 0.0,
               "train/wall_time_s": 9.0}  # fmt: skip
    final = {"global_step": 500, "metrics": metrics, "mlflow_run_id": run.info.run_id}
    (tmp_path / "logs" / f"{teacher.run_name}.log").write_text("step 500/500\n" + json.dumps(final) + "\n")
    (tmp_path / "logs" / f"{ft_io.run_name}.log").write_text("step 300/500\n")  # killed: no final line
    finished = finished_results(tmp_path, jobs)
    assert list(finished) == [teacher.run_name]
    assert finished[teacher.run_name]["process_wall_time_s"] == 42.0

    started: list[str] = []

    def refuse(job: Job, out: Path) -> None:
        started.append(job.run_name)
        raise RuntimeError("stop here")

    monkeypatch.setattr("ray_jobs.benchmarks.knife_benchmark._run", refuse)  # record what would start, start nothing
    with pytest.raises(RuntimeError, match="stop here"):
        run_all(jobs, tmp_path, finished)
    assert teacher.run_name not in started and started  # the teacher's students were queued, the teacher was not
    assert set(started) <= {j.run_name for j in jobs[1:]}


@pytest.mark.slow
def test_quick_benchmark_writes_table_json_and_plot(tmp_path: Path) -> None:
    """~2 min on an idle 2-core machine (9 runs of 24 steps); the timeout is only a safety net."""
    out = tmp_path / "knife"
    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.benchmarks.knife_benchmark", "--out", str(out), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "accuracy.png").stat().st_size > 0

    report = (out / "results.md").read_text()
    results_part = report.split("## Results (from the MLflow store)")[1]
    accuracy_table, generation_table = results_part.split("\n\n")[1:3]
    for label in LABELS:
        for table in (accuracy_table, generation_table):
            assert f"| {label} | " in table and f"| {label} | – |" not in table, (label, table)
    assert "generation accuracy" in generation_table
    assert "## Method − I→O, paired by seed" in report and "## Reading" in report
    assert "| synthetic | knife_student/kd_out_kl | " in report

    results = json.loads((out / "results.json").read_text())
    per_seed = results["per_seed_accuracy"]["synthetic"]
    assert set(per_seed) == set(LABELS) and set(KNIFE_METHODS) < set(LABELS)
    assert all(set(seeds) == {"0"} and 0.0 <= seeds["0"] <= 1.0 for seeds in per_seed.values())
    generation = results["per_seed_generation_accuracy"]["synthetic"]
    assert all(0.0 <= seeds["0"] <= 1.0 for seeds in generation.values())
    assert len(results["runs"]) == len(LABELS) and all(r["steps"] == 24 for r in results["runs"])
    paired = results["paired_minus_ft_io"]["synthetic"]
    assert set(paired) == set(LABELS) - {"ft_io"}
    student = paired["knife_student"]
    assert student["per_seed"]["0"] == pytest.approx(per_seed["knife_student"]["0"] - per_seed["ft_io"]["0"])
    assert student["ci95"] is None  # one seed
    assert results["budget"]["datasets"]["synthetic"]["max_steps"] == 24
    assert results["ablations"]["kd_in_only"] == ["method.knife.lambda_out=0"]
