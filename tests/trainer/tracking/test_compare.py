"""compare_runs / format_table / CLI on a real MLflow SQLite store, runs created through MLflowTracker."""

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config.schema import TrackingConfig
from trainer.tracking.compare import ExperimentNotFoundError, compare_runs, format_table, main
from trainer.tracking.mlflow_tracker import MLflowTracker

EXPERIMENT = "cmp"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three seeds of ft_io and knife_student on two datasets, an ablation variant, plus runs that must not count."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    cfg = TrackingConfig(tracking_uri=uri, experiment=EXPERIMENT)

    def run(tags: dict[str, str], metrics: dict[str, float], status: str | None = "FINISHED") -> MLflowTracker:
        tracker = MLflowTracker(cfg, run_name="r", tags=tags)
        tracker.log_metrics(metrics, step=1)
        if status:
            tracker.finish(status)
        return tracker

    for dataset, accs in (("synthetic", (0.5, 0.6, 0.7)), ("strategyqa", (0.55, 0.55, 0.58))):
        for seed, acc in enumerate(accs):
            tags = {"dataset": dataset, "bench_seed": str(seed), "model": "t5-tiny"}
            common = {"train/steps": 100.0 + seed, "train/wall_time_s": 10.0 * (seed + 1)}
            generation = {"dev/generation_accuracy": acc - 0.1}
            run(
                {**tags, "method": "ft_io"},
                {"dev/accuracy": acc, **generation, **common, "model/num_parameters": 321536.0},
            )
            run({**tags, "method": "knife_student"}, {"dev/accuracy": acc + 0.1, **common})  # no generation metric
            if dataset == "synthetic":
                run({**tags, "method": "knife_student", "variant": "kd_in_only"}, {"dev/accuracy": 0.4, **common})
    # Registered after the KNIFE methods, and each ranked by its own headline metric.
    kard = {"dataset": "synthetic", "method": "kard_bm25", "method.name": "kard"}
    run({**kard, "headline_metric": "dev/vote_accuracy"}, {"dev/accuracy": 0.1, "dev/vote_accuracy": 0.7})
    reranker = {"dataset": "synthetic", "method": "kard_reranker", "method.name": "kard_reranker"}
    run({**reranker, "headline_metric": "dev/reranker_recall_at_1"}, {"dev/reranker_recall_at_1": 0.9})
    parent = run({"reasondistill.pipeline": "kard"}, {"dev/accuracy": 0.99})
    run({"method": "ft_io", "dataset": "synthetic", "mlflow.parentRunId": parent.run_id}, {"dev/accuracy": 0.8})
    run({"method": "ft_io", "dataset": "synthetic"}, {"dev/accuracy": 0.0}, status=None)  # still running
    run({"method": "ft_io", "dataset": "synthetic"}, {"dev/accuracy": 0.0}, status="FAILED")
    return uri


def test_groups_finished_method_runs_with_mean_and_std(store: str) -> None:
    rows = {(r.dataset, r.method): r for r in compare_runs(store, EXPERIMENT)}
    assert set(rows) == {
        ("strategyqa", "ft_io"),
        ("strategyqa", "knife_student"),
        ("synthetic", "ft_io"),
        ("synthetic", "knife_student"),
        ("synthetic", "knife_student/kd_in_only"),
        ("synthetic", "kard_bm25"),
        ("synthetic", "kard_reranker"),
    }
    assert rows["synthetic", "knife_student/kd_in_only"].n == 3 and rows["synthetic", "knife_student"].n == 3
    # Four finished synthetic ft_io runs: three seeds and the pipeline child; parent/running/failed are out.
    io = rows["synthetic", "ft_io"]
    assert io.n == 4 and sorted(io.accuracies) == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert io.accuracy_mean == pytest.approx(0.65)
    assert io.accuracy_std == pytest.approx(statistics.stdev([0.5, 0.6, 0.7, 0.8]))
    student = rows["strategyqa", "knife_student"]
    assert student.n == 3 and student.accuracy_mean == pytest.approx((0.65 + 0.65 + 0.68) / 3)
    assert student.accuracy_std == pytest.approx(statistics.stdev([0.65, 0.65, 0.68]))
    assert student.steps_mean == pytest.approx(101.0) and student.wall_time_s_mean == pytest.approx(20.0)
    assert rows["strategyqa", "ft_io"].num_parameters == 321536
    assert rows["strategyqa", "ft_io"].generation_accuracies == pytest.approx((0.45, 0.45, 0.48))
    assert rows["strategyqa", "knife_student"].generation_accuracies == ()
    assert [r.method for r in compare_runs(store, EXPERIMENT)] == [
        "ft_io", "knife_student", "ft_io", "knife_student", "knife_student/kd_in_only", "kard_bm25", "kard_reranker"
    ]  # fmt: skip


def test_table_has_methods_in_fixed_order_and_one_column_per_dataset(store: str) -> None:
    table = format_table(compare_runs(store, EXPERIMENT))
    accuracy, generation, cost = (part.splitlines() for part in table.split("\n\n"))
    assert accuracy[0] == "| dev headline metric (mean ± std over seeds) | metric | strategyqa | synthetic |"
    assert [line.split(" | ")[0].lstrip("| ") for line in accuracy[2:]] == [
        "ft_io",
        "knife_student",
        "knife_student/kd_in_only",
        "kard_bm25",
        "kard_reranker",
    ]
    assert accuracy[2] == "| ft_io | dev/accuracy | 0.560 ± 0.017 (n=3) | 0.650 ± 0.129 (n=4) |"
    assert accuracy[4] == "| knife_student/kd_in_only | dev/accuracy | – | 0.400 ± 0.000 (n=3) |"
    # Each method's own headline, named beside it: the voting KARD student, the reranker's recall.
    assert accuracy[5] == "| kard_bm25 | dev/vote_accuracy | – | 0.700 (n=1) |"
    assert accuracy[6] == "| kard_reranker | dev/reranker_recall_at_1 | – | 0.900 (n=1) |"
    assert generation[0] == "| dev generation accuracy (greedy output parsed) | metric | strategyqa | synthetic |"
    assert generation[2] == "| ft_io | dev/accuracy | 0.460 ± 0.017 (n=3) | 0.500 ± 0.100 (n=3) |"
    assert generation[3] == "| knife_student | dev/accuracy | – | – |"
    assert "101 steps, 20 s" in "\n".join(cost)


def test_unknown_experiment_is_named(store: str, tmp_path: Path) -> None:
    with pytest.raises(ExperimentNotFoundError, match="'nope' not found.*known: .*cmp"):
        compare_runs(store, "nope")
    missing = tmp_path / "elsewhere.db"
    with pytest.raises(ExperimentNotFoundError, match="'cmp'"):
        compare_runs(f"sqlite:///{missing}", EXPERIMENT)
    assert not missing.exists()


def test_cli_prints_table_and_fails_on_unknown_experiment(
    store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--experiment", EXPERIMENT, "--tracking-uri", store]) == 0
    assert "| knife_student | dev/accuracy | 0.660 ± 0.017 (n=3) | 0.700 ± 0.100 (n=3) |" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nope")
    assert main([]) == 2
    assert "experiment 'nope' not found" in capsys.readouterr().err


def test_cli_as_module_exit_code(store: str) -> None:
    """Each subprocess takes ~5 s idle; the timeouts are safety nets."""
    ok = subprocess.run(
        [sys.executable, "-m", "trainer.tracking.compare", "--experiment", EXPERIMENT, "--tracking-uri", store],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0 and "| ft_io |" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "trainer.tracking.compare", "--experiment", "nope", "--tracking-uri", store],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "experiment 'nope' not found" in bad.stderr
