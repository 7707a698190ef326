"""What `ray_jobs.submit` sends (`ds.zero_stage=auto` resolved before submission, for runs and pipelines), and how
little the submitter and the job drivers import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.job_payload import PAYLOAD_ENV, decode_payload
from ray_jobs.pipeline import PipelinePlan
from ray_jobs.submit import build_request, job_env, localize
from trainer.config.loader import ConfigError, load_config
from trainer.config.schema import ExperimentConfig

CONFIGS = Path(__file__).resolve().parents[2] / "ray_jobs" / "configs"


def test_auto_stage_is_resolved_in_the_payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    request = build_request(
        [
            str(CONFIGS / "demo.yaml"),
            "model.name=t5-3b",
            "run.use_gpu=true",
            "run.num_workers=1",
            "ds.zero_stage=auto",
            "ds.precision=bf16",
            "data.max_input_length=512",
            "data.max_target_length=128",
            "optim.micro_batch_size=8",
        ]
    )
    cfg = decode_payload(ExperimentConfig, request.payload)
    assert (cfg.ds.zero_stage, cfg.ds.template, cfg.model.gradient_checkpointing) == (2, "zero2", True)
    assert cfg.tracking.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # still localized for this machine


def test_auto_stage_in_a_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    request = build_request([str(CONFIGS / "knife_synthetic.yaml"), "ds.zero_stage=auto"])
    plan = decode_payload(PipelinePlan, request.payload)
    assert {s.config.ds.zero_stage for s in plan.stages} == {2}


def test_auto_that_cannot_fit_fails_before_submission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ds.zero_stage=auto: t5-3b does not fit"):
        build_request(
            [
                str(CONFIGS / "demo.yaml"),
                "model.name=t5-3b",
                "run.use_gpu=true",
                "run.num_workers=1",
                "ds.zero_stage=auto",
                "cluster.gpu_memory_gib=8",
                "cluster.node_memory_gib=16",
            ]
        )


def test_credentials_never_enter_the_job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray job's runtime_env is readable by anyone who can list jobs; pods read secrets from Secrets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k3n")
    request = build_request([str(CONFIGS / "demo.yaml")])
    env = job_env(False, request)
    assert "MLFLOW_TRACKING_TOKEN" not in env and PAYLOAD_ENV in env


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("ray_jobs.submit", ("torch", "transformers", "deepspeed", "datasets")),
        ("ray_jobs.train_job", ("transformers", "deepspeed", "datasets")),  # Ray Train's torch backend needs torch
        ("ray_jobs.pipeline_job", ("transformers", "deepspeed", "datasets")),
    ],
)
def test_submitter_and_job_drivers_stay_import_light(module: str, absent: tuple[str, ...]) -> None:
    """Seconds of start-up on every submit and every job: only the training workers import the ML stack."""
    probe = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == ""


def test_localize_resolves_every_declared_path_and_local_model_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths in a method's own section count as much as the core's: the job runs in a copy of the working dir."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "verifier").mkdir()
    knife = localize(
        load_config(
            overrides=["method.name=knife_student", "method.knife.teacher=teacher", "data.verifier_model=verifier"]
        )
    )
    assert knife.method.knife.teacher == str(tmp_path / "teacher")
    assert knife.data.verifier_model == str(tmp_path / "verifier")
    kard = localize(
        load_config(
            overrides=[
                "method.name=kard",
                "method.kard.knowledge=k/train",
                "method.kard.reranker=runs:/abc/model",
                "model.name=t5-small",
                "retrieval.cache_dir=cache",
            ]
        )
    )
    assert kard.method.kard.knowledge == str(tmp_path / "k" / "train")
    assert kard.method.kard.reranker == "runs:/abc/model" and kard.model.name == "t5-small"  # URI, hub name: kept
    assert kard.retrieval.cache_dir == str(tmp_path / "cache")
