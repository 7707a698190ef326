"""The KNIFE pipeline as one real Ray job: teacher, then a 2-worker ZeRO-2 student with a frozen ZeRO-3 teacher."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from trainer.tracking.compare import compare_runs

pytestmark = pytest.mark.slow


def test_knife_pipeline_parent_and_child_runs(tmp_path: Path) -> None:
    pipeline = {
        "name": "knife-e2e",
        "base": {
            "model": {"name": "t5-tiny", "tokenizer_vocab_size": 300},
            "data": {
                "dataset": "synthetic",
                "rationale_source": "llm_random",
                "max_dev_examples": 12,
                "max_input_length": 48,
                "max_rationale_length": 32,
                "max_target_length": 4,
            },
            "optim": {"max_steps": 3, "micro_batch_size": 8, "warmup_steps": 1},
            "ds": {"template": "zero2"},
            "run": {"num_workers": 2},
            "tracking": {"experiment": "knife-e2e", "log_every": 1},
        },
        "stages": [
            {"name": "teacher", "overrides": {"method": {"name": "knife_teacher"}}},
            {
                "name": "student",
                "teacher": "teacher",
                "overrides": {"method": {"name": "knife_student", "knife": {"teacher_zero_stage": 3}}},
            },
        ],
    }
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"pipeline": pipeline}))
    proc = subprocess.run(
        [sys.executable, "-m", "ray_jobs.submit", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "[teacher] dev/accuracy" in proc.stdout and "[student] dev/accuracy" in proc.stdout

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("knife-e2e").experiment_id
    [parent] = client.search_runs([experiment_id], "tags.`reasondistill.pipeline` = 'knife-e2e' and tags.stage IS NULL")
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {run.data.tags["stage"]: run for run in children}
    assert set(by_stage) == {"teacher", "student"}
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children)
    teacher, student = by_stage["teacher"], by_stage["student"]
    assert student.data.tags["knife.teacher_run_id"] == teacher.info.run_id
    assert student.data.tags["knife.teacher_model_uri"] == f"runs:/{teacher.info.run_id}/model"
    assert student.data.params["method.knife.teacher"] == f"runs:/{teacher.info.run_id}/model"
    assert {"train/kd_in_loss", "train/kd_out_loss", "train/task_loss"} <= set(student.data.metrics)
    assert parent.data.metrics["student/dev_accuracy"] == student.data.metrics["dev/accuracy"]
    assert parent.data.tags["stage.student.run_id"] == student.info.run_id
    assert {"teacher", "student"} <= set(
        mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/pipeline/results.json")
    )

    # Uniform metric names let the compare table line the two methods up.
    rows = {row.method: row for row in compare_runs(tracking_uri, "knife-e2e")}
    assert set(rows) == {"knife_teacher", "knife_student"}
    assert rows["knife_student"].steps_mean == 3
