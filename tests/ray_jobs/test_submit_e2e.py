"""Real Ray jobs on a real local cluster: 2 Ray Train workers, DeepSpeed ZeRO-2, a real MLflow SQLite store."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest

from ray_jobs.local_cluster import LocalRayHead
from trainer.config.loader import load_config
from trainer.data.formatting import format_question
from trainer.data.registry import load_splits

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESS_TAG = "REASONDISTILL_TEST_PROCESS_TAG"


def submit(args: list[str], cwd: Path, tag: str = "") -> subprocess.CompletedProcess:
    """The submitter as a user runs it; `tag` marks its environment, which every process it starts inherits."""
    return subprocess.run(
        [sys.executable, "-m", "ray_jobs.submit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), PROCESS_TAG: tag},
    )


def tagged_processes(tag: str) -> list[str]:
    """Live processes (not zombies) whose environment carries `tag`: what a submit left running."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get(PROCESS_TAG) == tag:
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])[:200]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_ray_job_trains_tracks_exports_and_resumes(shared_data: Path, tmp_path: Path) -> None:
    overrides = [
        str(REPO_ROOT / "ray_jobs/configs/demo.yaml"),
        f"data.data_dir={shared_data}",
        "data.max_train_examples=128",
        "data.max_dev_examples=12",
        "model.tokenizer_vocab_size=800",
        "optim.max_steps=4",
        "optim.warmup_steps=1",
        "optim.micro_batch_size=4",
        "run.eval_every=0",
        "run.save_every=2",
        "tracking.log_every=1",
        "tracking.experiment=e2e",
        "run.name=e2e",
    ]
    # 1) No address: the submitter starts a local head, runs the job, stops the head, and no Ray process of it
    # (GCS, raylet, dashboard, workers, the job driver) outlives the submitter.
    tag = uuid.uuid4().hex
    first = submit(overrides, tmp_path, tag)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "starting a local Ray head" in first.stdout and "local Ray head stopped" in first.stdout
    assert tagged_processes(tag) == []
    assert "==== ReasonDistill result ====" in first.stdout
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store lands in the submitter's cwd
    client = mlflow.MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.data.metrics["train/steps"] == 4 and "dev/accuracy" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert run.data.params["run.world_size"] == "2" and run.data.params["ds.template"] == "zero2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert artifacts == {"config/config.yaml", "config/deepspeed.json"}
    ds_config = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/config/deepspeed.json")
    assert ds_config["zero_optimization"]["stage"] == 2 and ds_config["train_batch_size"] == 8

    # The logged model loads back from the run and reproduces the end-of-training predictions.
    predictions_file = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="predictions/dev.jsonl", tracking_uri=tracking_uri
    )
    predictions = [json.loads(line) for line in Path(predictions_file).read_text().splitlines()]
    cfg = load_config(overrides=overrides[1:])
    dev = load_splits(cfg.data, cfg.run.seed).dev
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    generated = model.predict(pd.DataFrame({"input": [format_question(ex) for ex in dev]}), params={"batch_size": 1})
    assert generated == [p["generated"] for p in predictions]

    with LocalRayHead(num_cpus=2, log_file=tmp_path / "head.log") as head:
        # 2) Same run name and storage: the job resumes from the last checkpoint into the same MLflow run.
        second = submit([*overrides, "optim.max_steps=6", "--address", head.address], tmp_path)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        resumed = client.get_run(run.info.run_id)
        assert resumed.data.tags["resumed_from_step"] == "4" and resumed.data.metrics["train/steps"] == 6
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]

        # 3) A job that fails inside the workers (preflight skipped, so the job itself meets the missing data)
        # makes the submitter exit non-zero, ending on the root cause (stage, rank, exception), then the other ranks.
        failed = submit(
            [
                *overrides,
                "run.name=broken",
                f"data.data_dir={tmp_path / 'missing'}",
                "--address",
                head.address,
                "--no-preflight",
            ],
            tmp_path,
        )
        assert failed.returncode == 1
        assert "Ray job ended FAILED" in failed.stderr
        assert re.search(
            r"root cause \(stage 'broken', rank \d\): DataError: dataset 'strategyqa': \S+ not found",
            "\n".join(failed.stderr.strip().splitlines()[-3:]),
        ), failed.stderr[-2000:]


def test_a_terminated_submitter_leaves_no_ray_process(shared_data: Path, tmp_path: Path) -> None:
    """SIGTERM while the job trains: the submitter stops the local head it started, and with it every process."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "ray_jobs.submit", str(REPO_ROOT / "ray_jobs/configs/demo.yaml"),
            f"data.data_dir={shared_data}", "data.max_dev_examples=12", "model.tokenizer_vocab_size=800",
            "optim.max_steps=100000", "tracking.experiment=sigterm", "run.name=sigterm",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), PROCESS_TAG: tag},
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # ends when the submitter exits, so a submitter that failed early fails below
        seen.append(line)
        if "] job " in line and "submitted to" in line:
            break
    assert proc.poll() is None, "".join(seen)[-4000:]
    time.sleep(5)  # into the job: the driver and the worker group are starting
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output[-4000:]
    assert "local Ray head stopped" in output, output[-4000:]
    assert tagged_processes(tag) == []


def test_missing_data_caught_by_preflight(tmp_path: Path) -> None:
    result = submit(["data.dataset=strategyqa", f"data.data_dir={tmp_path / 'missing'}"], tmp_path)
    assert result.returncode == 2 and "data: dataset 'strategyqa'" in result.stderr


def test_bad_config_fails_before_submitting(tmp_path: Path) -> None:
    result = submit(["optim.max_stepz=3"], tmp_path)
    assert result.returncode == 2
    assert "optim.max_stepz: unknown key" in result.stderr
