"""Bad input fails on the submitting machine in seconds, exit 2, naming the field; nothing is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from ray_jobs.local_cluster import free_port
from ray_jobs.preflight import PreflightError, preflight
from trainer.config.loader import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def check(*overrides: str) -> None:
    preflight([("", load_config(overrides=list(overrides)))], local_cluster=True, report=lambda _: None)


def test_missing_data_file_exits_2_before_any_ray_head(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.submit", "data.dataset=jsonl", "data.train_path=/nope.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "data.train_path: data file not found: /nope.jsonl" in result.stderr
    assert "starting a local Ray head" not in result.stdout and not (tmp_path / "runs").exists()


def test_data_rows_dataset_and_paths(tmp_path: Path) -> None:
    rows = tmp_path / "train.jsonl"
    good = {"id": "q1", "question": "Is ice cold?", "answer_index": 0, "choices": ["yes", "no"]}
    rows.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(PreflightError, match=r"data.train_path: .*train.jsonl:2: invalid JSON"):
        check("data.dataset=jsonl", f"data.train_path={rows}")
    with pytest.raises(PreflightError, match="data.dataset: unknown dataset 'nope'"):
        check("data.dataset=nope")
    with pytest.raises(PreflightError, match="data.train_path: dataset 'jsonl' needs"):
        check("data.dataset=jsonl")
    with pytest.raises(PreflightError, match="model.name: /no/such/model is not a model directory"):
        check("data.dataset=synthetic", "model.name=/no/such/model")


def test_tracking_and_model_uris(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PreflightError, match=f"tracking.tracking_uri: MLflow tracking server {dead} unreachable"):
        check("data.dataset=synthetic", f"tracking.tracking_uri={dead}")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    run = client.create_run(client.create_experiment("x"))
    with pytest.raises(PreflightError, match=f"method.knife.teacher: runs:/{run.info.run_id}/model: run .* has no"):
        check(
            "data.dataset=synthetic",
            f"tracking.tracking_uri={store}",
            "method.name=knife_student",
            f"method.knife.teacher=runs:/{run.info.run_id}/model",
        )
    with pytest.raises(PreflightError, match="method.knife.teacher: runs:/0123abc/model"):
        check(
            "data.dataset=synthetic",
            f"tracking.tracking_uri={store}",
            "method.name=knife_student",
            "method.knife.teacher=runs:/0123abc/model",
        )
    with pytest.raises(PreflightError, match="method.kard.reranker: runs:/0123abc/model"):  # a method's own field
        check(
            "data.dataset=synthetic", f"tracking.tracking_uri={store}", "method.name=kard",
            "method.kard.reranker=runs:/0123abc/model",
        )  # fmt: skip
    check("data.dataset=synthetic", f"tracking.tracking_uri={store}")  # a sound config passes


def test_retrieval_service_must_answer(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PreflightError, match=f"retrieval.url: retrieval service {dead} unreachable"):
        check("data.dataset=synthetic", "retrieval.mode=http", f"retrieval.url={dead}")
    with pytest.raises(PreflightError, match="retrieval.corpus: corpus file not found"):
        check("data.dataset=synthetic", f"retrieval.corpus={tmp_path / 'none.jsonl'}")
