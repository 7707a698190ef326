"""A method added from one module outside trainer/ (label_smoothed_io.py), registered at import: it validates its
own section, trains and evaluates through the loop (one in-process rank, real DeepSpeed, real MLflow store), is
planned with the lengths it declares, takes a pipeline reference it declares, and renders as a RayJob whose
processes import it (REASONDISTILL_METHOD_MODULES)."""

from __future__ import annotations

import importlib
from pathlib import Path

import mlflow
import pytest
import yaml

from ray_jobs.job_payload import PAYLOAD_ENV
from ray_jobs.k8s.render import render
from ray_jobs.pipeline import load_pipeline, wire_stage
from trainer.checkpoint_io import LocalCheckpointIO
from trainer.config.loader import ConfigError, load_config
from trainer.loop import Trainer
from trainer.methods.registry import METHOD_MODULES_ENV, registered_methods
from trainer.planning.from_config import workload

MODULE = "label_smoothed_io"


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv(METHOD_MODULES_ENV, MODULE)
    importlib.import_module(MODULE)
    return "io_label_smoothed"


def test_its_section_is_validated_like_a_built_in_one(plugin: str) -> None:
    assert plugin in registered_methods()
    cfg = load_config(overrides=[f"method.name={plugin}", "method.smoothing.epsilon=0.2"])
    assert cfg.method.smoothing.epsilon == 0.2
    with pytest.raises(ConfigError, match=r"method\.smoothing\.epsilon: Input should be less than 1"):
        load_config(overrides=[f"method.name={plugin}", "method.smoothing.epsilon=1.5"])
    with pytest.raises(ConfigError, match=r"method\.knife: unknown key"):
        load_config(overrides=[f"method.name={plugin}", "method.knife.lambda_in=1"])


def test_it_trains_and_evaluates_through_the_loop(plugin: str, tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(f"method.name={plugin}", "run.name=plugin")
    result = Trainer(cfg, LocalCheckpointIO(tmp_path / "ckpt")).fit()
    assert result.global_step == cfg.optim.max_steps
    assert {"dev/accuracy", "dev/generation_accuracy"} <= set(result.metrics)
    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.tags["method"] == plugin and run.data.tags["headline_metric"] == "dev/generation_accuracy"
    assert run.data.params["method.smoothing.epsilon"] == "0.1"


def test_the_planner_sizes_the_lengths_it_declares(plugin: str) -> None:
    cfg = load_config(overrides=[f"method.name={plugin}", "data.max_input_length=40", "data.max_target_length=9"])
    work = workload(cfg)
    assert (work.source_length, work.target_length) == (40, 10)


def test_a_pipeline_wires_the_reference_it_declares(plugin: str, tmp_path: Path) -> None:
    stages = [
        {"name": "io", "overrides": {"method": {"name": "ft_io"}}},
        {"name": "smoothed", "init_from": "io", "overrides": {"method": {"name": plugin}}},
    ]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"pipeline": {"name": "p", "stages": stages}}))
    plan = load_pipeline(path)
    wired, _ = wire_stage(plan.stages[1], {"io": {"model_uri": "runs:/abc/model", "mlflow_run_id": "abc"}})
    assert wired.config.method.smoothing.init == "runs:/abc/model"
    stages[1] = {**stages[1], "teacher": "io"}
    path.write_text(yaml.safe_dump({"pipeline": {"name": "p", "stages": stages}}))
    with pytest.raises(ConfigError, match=r"\.teacher: method 'io_label_smoothed' takes no such stage reference"):
        load_pipeline(path)


def test_it_renders_as_a_rayjob_that_imports_it(plugin: str, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": {"name": plugin, "smoothing": {"epsilon": 0.05}}}))
    rendered = render([str(config)], image="registry.example/reasondistill:test")
    env = yaml.safe_load(rendered.manifest["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env[METHOD_MODULES_ENV] == MODULE and PAYLOAD_ENV in env
