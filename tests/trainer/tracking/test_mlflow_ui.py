"""What the MLflow UI shows a user, on a real SQLite store through the tracking facade: the experiment kind that opens
the training view, readable run names and tags, a pipeline parent's comparison table and chart, system metrics,
and the registered `candidate` model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from trainer.config.loader import ConfigError, load_config
from trainer.config.schema import ModelConfig, TrackingConfig
from trainer.models.factory import build_model, build_model_config, build_tokenizer
from trainer.tracking.compare import CHART_METRIC, log_experiment_comparison, log_pipeline_comparison
from trainer.tracking.mlflow_tracker import (
    CANDIDATE_ALIAS,
    EXPERIMENT_KIND_TAG,
    TRAINING_EXPERIMENT_KIND,
    MLflowTracker,
    run_identity,
    training_view_url,
)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tracking(store: str, experiment: str = "ui") -> TrackingConfig:
    return TrackingConfig(tracking_uri=store, experiment=experiment, system_metrics=False)


def test_experiments_open_on_training_runs_and_keep_a_kind_a_user_set(store: str) -> None:
    client = MlflowClient(store)
    MLflowTracker(tracking(store, "created"), run_name="r").finish()
    existing = client.create_experiment("existing")  # made before this product logged into it
    MLflowTracker(tracking(store, "existing"), run_name="r").finish()
    user_set = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    MLflowTracker(tracking(store, "genai"), run_name="r").finish()

    created = client.get_experiment_by_name("created")
    assert created is not None and created.tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    assert client.get_experiment(existing).tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    assert client.get_experiment(user_set).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_printed_ui_link_opens_the_experiments_training_runs(store: str) -> None:
    """MLflow 3.17's UI ignores the experiment kind while its GenAI toggle is on; the link's parameter sets it."""
    MLflowTracker(tracking(store, "linked"), run_name="r").finish()
    linked = MlflowClient(store).get_experiment_by_name("linked")
    assert linked is not None
    url = training_view_url("http://127.0.0.1:5000/", store, "linked")
    assert url == f"http://127.0.0.1:5000/#/experiments/{linked.experiment_id}?workflowType=machine_learning"
    assert training_view_url("http://h:5000", store, "absent") == "http://h:5000/#/experiments?workflowType=machine_learning"


def test_run_names_and_tags_read_without_opening_runs() -> None:
    cfg = load_config(overrides=["method.name=rd", "data.dataset=synthetic", "run.seed=3", "tracking.run_name=rd"])
    name, tags = run_identity(cfg, "rd", {"pipeline": "kard-synthetic", "stage": "rd"})
    assert name == "rd · synthetic · t5-tiny · seed 3"
    assert tags == {"method": "rd", "dataset": "synthetic", "model": "t5-tiny", "seed": "3"}

    standalone, _ = run_identity(load_config(overrides=["run.seed=1", "data.dataset=synthetic"]), "ft_io", {})
    assert standalone == "ft_io · synthetic · t5-tiny · seed 1"  # no run name given: the method names the run
    evaluated = load_config(
        overrides=["model.name=runs:/0123456789abcdef/model", "tracking.run_name=kard_oracle", "data.dataset=synthetic"]
    )
    assert run_identity(evaluated, "kard", {})[0] == "kard_oracle · synthetic · run 01234567/model · seed 42"
    of_stage = run_identity(evaluated, "kard_oracle", {"evaluates_stage": "kard", "stage": "kard_oracle"})[0]
    assert of_stage == "kard_oracle · synthetic · model of kard · seed 42"

    custom = load_config(overrides=["tracking.run_name_template='{pipeline}/{stage} s{seed}'"])
    assert run_identity(custom, "kard", {"pipeline": "p", "stage": "kard"})[0] == "p/kard s42"
    with pytest.raises(ConfigError, match=r"run_name_template.*'lr'.*known fields: name, method"):
        load_config(overrides=["tracking.run_name_template='{lr} {name}'"])


def test_pipeline_parent_compares_its_stages_over_the_experiments_seeds(store: str, tmp_path: Path) -> None:
    cfg = tracking(store, "kard")
    client = MlflowClient(store)
    parent = MLflowTracker(cfg, run_name="kard-synthetic", tags={"reasondistill.role": "pipeline"})

    def stage(name: str, method: str, headline: str, value: float, seed: int, parent_id: str | None) -> str:
        tags = {"method": method, "dataset": "synthetic_kb", "model": "t5-tiny", "seed": str(seed), "stage": name}
        run = MLflowTracker(cfg, run_name=name, parent_run_id=parent_id, tags={**tags, "headline_metric": headline})
        run.log_metrics({headline: value}, step=1)
        run.finish()
        return run.run_id

    ft_io = stage("ft_io", "ft_io", "dev/accuracy", 0.40, 0, parent.run_id)
    stage("kard", "kard_bm25", "dev/vote_accuracy", 0.60, 0, parent.run_id)
    for seed, value in ((1, 0.50), (2, 0.45)):  # two more seeds of ft_io elsewhere in the experiment
        stage("ft_io", "ft_io", "dev/accuracy", value, seed, None)

    rows = {row["stage"]: row for row in log_pipeline_comparison(client, parent.run_id)}
    parent.finish()

    assert set(rows) == {"ft_io", "kard"}
    assert rows["ft_io"]["value"] == pytest.approx(0.40) and rows["ft_io"]["runs_in_experiment"] == 3
    assert rows["ft_io"]["mean"] == pytest.approx(0.45)
    low, high = rows["ft_io"]["ci95_low"], rows["ft_io"]["ci95_high"]
    assert isinstance(low, float) and isinstance(high, float) and low < 0.45 < high  # t-interval, 3 seeds
    assert rows["kard"]["metric"] == "dev/vote_accuracy" and rows["kard"]["ci95_low"] is None  # one run: no interval
    table = json.loads(
        Path(client.download_artifacts(parent.run_id, "comparison/stages.json", str(tmp_path))).read_text()
    )
    values = {row[0]: row[6] for row in table["data"]}
    assert table["columns"][0] == "stage" and table["columns"][6] == "value"
    assert values == pytest.approx({"ft_io": 0.40, "kard": 0.60})
    figure = Path(client.download_artifacts(parent.run_id, "comparison/headline.png", str(tmp_path)))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get_run(ft_io).data.metrics[CHART_METRIC] == pytest.approx(0.40)

    logged = log_experiment_comparison(store, "kard")  # the CLI's --log: a `comparison` run of its own
    methods = json.loads(Path(client.download_artifacts(logged, "comparison/methods.json", str(tmp_path))).read_text())
    assert [(r[1], r[3]) for r in methods["data"]] == [("ft_io", 3), ("kard_bm25", 1)]
    assert "comparison/headline.png" in {a.path for a in client.list_artifacts(logged, "comparison")}


def test_system_metrics_appear_on_a_run(store: str) -> None:
    tracker = MLflowTracker(
        TrackingConfig(tracking_uri=store, experiment="system", system_metrics_interval_s=0.2),
        run_name="sampled",
        system_metrics=True,
    )
    client = MlflowClient(store)
    deadline = time.monotonic() + 60.0  # a safety net: sampling every 0.2 s takes well under a second here
    while time.monotonic() < deadline and tracker._system_metrics is not None:
        tracker._system_metrics.mlflow_logger.flush()
        if "system/cpu_utilization_percentage" in client.get_run(tracker.run_id).data.metrics:
            break
        time.sleep(0.2)
    tracker.finish()
    metrics = client.get_run(tracker.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert {"system/disk_usage_percentage", "system/network_receive_megabytes"} <= set(metrics)


def _tiny_export(directory: Path) -> Path:
    """A real t5-tiny HF export (word-level tokenizer trained offline), what a run's `model` artifact holds."""
    model_cfg = ModelConfig(name="t5-tiny", tokenizer_vocab_size=64)
    tokenizer = build_tokenizer(model_cfg, corpus=lambda: ["yes no maybe"] * 4, broadcast=lambda s: s)
    build_model(model_cfg, build_model_config(model_cfg, tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_registered_candidate_points_at_the_selected_model_and_loads(store: str, tmp_path: Path) -> None:
    tracker = MLflowTracker(tracking(store, "registry"), run_name="kard")
    model_uri = tracker.log_model(_tiny_export(tmp_path / "export"))
    first = tracker.register_model("kard-student", model_uri, {"dev/accuracy": 0.625, "dev/vote_accuracy": 0.7})
    second = tracker.register_model("kard-student", model_uri, {"dev/accuracy": 0.75})
    tracker.finish()

    client = MlflowClient(store)
    candidate = client.get_model_version_by_alias("kard-student", CANDIDATE_ALIAS)
    assert (first, second, str(candidate.version)) == ("1", "2", "2")  # the alias moves to the newest version
    assert candidate.run_id == tracker.run_id and candidate.tags == {"dev/accuracy": "0.75"}
    assert client.get_model_version("kard-student", "1").tags["dev/vote_accuracy"] == "0.7"
    assert client.get_run(tracker.run_id).data.tags["registered_model"] == "kard-student/2"
    mlflow.set_tracking_uri(store)
    loaded = mlflow.pyfunc.load_model(f"models:/kard-student@{CANDIDATE_ALIAS}")
    [answer] = loaded.predict(pd.DataFrame({"input": ["yes or no"]}), params={"max_new_tokens": 3})
    assert isinstance(answer, str)


def test_register_as_needs_the_model_logged() -> None:
    with pytest.raises(ConfigError, match="tracking.register_as"):
        load_config(overrides=["tracking.register_as=kard-student", "tracking.log_model=false"])
