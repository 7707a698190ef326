"""The single MLflow facade: rank 0 logs, every other rank holds a no-op with the same interface."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.data
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.time import get_current_time_millis

from trainer.config.schema import TrackingConfig

if TYPE_CHECKING:
    import datasets

DEFAULT_EXPERIMENT = "reasondistill"
MODEL_ARTIFACT_PATH = "model"
HF_MODEL_ARTIFACT = "hf_model"  # the artifact key seq2seq_pyfunc.py loads the HF directory from
PYFUNC_FILE = Path(__file__).with_name("seq2seq_pyfunc.py")
_PARAM_BATCH = 100
PYFUNC_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "input")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 0), ParamSpec("batch_size", "long", 32)]),
)


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Config, then MLFLOW_TRACKING_URI, then a SQLite store in the working directory."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_experiment(cfg: TrackingConfig) -> str:
    return cfg.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store, not in the process's cwd (a Ray job's cwd is a temp copy)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


class MLflowTracker:
    """Logs one run; creates it or re-opens it (resume) and optionally nests it under a parent run."""

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str,
        resume_run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(cfg)
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self._experiment_id(resolve_experiment(cfg))
        if resume_run_id:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run_tags = {**cfg.tags, **(tags or {})}
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags).info.run_id

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            root = _local_artifact_root(self.tracking_uri)
            return self.client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create.
            return self.client.get_experiment_by_name(name).experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _PARAM_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = get_current_time_millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_jsonl(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent) or None)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows as an MLflow table artifact, browsable in the run's Artifacts tab and the Evaluation view."""
        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_input(self, dataset: datasets.Dataset, name: str, digest: str, source: str, context: str) -> None:
        """Record a Hugging Face dataset as the run's input (the UI's Dataset column: name, digest, schema, rows)."""
        logged = mlflow.data.from_huggingface(dataset, name=name, digest=digest, source=source)
        entity = DatasetInput(logged._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self.client.log_inputs(self.run_id, datasets=[entity])

    def log_model(self, export_dir: Path) -> str:
        """Log an exported HF dir as a pyfunc model; returns its `runs:/` URI."""
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id, experiment_id=self.experiment_id):
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH,
                python_model=str(PYFUNC_FILE),
                artifacts={HF_MODEL_ARTIFACT: str(export_dir)},
                signature=PYFUNC_SIGNATURE,
                pip_requirements=[f"mlflow=={mlflow.__version__}", "torch", "transformers", "pandas"],
            )
        # Leaving the fluent context marks the run finished; training still owns its status.
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return f"runs:/{self.run_id}/{MODEL_ARTIFACT_PATH}"

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class NullTracker:
    """Stands in on non-zero ranks so callers never branch on rank."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_jsonl(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...
    def log_input(self, dataset: datasets.Dataset, name: str, digest: str, source: str, context: str) -> None: ...
    def log_model(self, export_dir: Path) -> str | None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


Tracker = MLflowTracker | NullTracker


def create_tracker(
    cfg: TrackingConfig,
    is_rank_zero: bool,
    run_name: str,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Tracker:
    """MLflow on rank 0 only: one run per training job however many workers it has."""
    if not is_rank_zero:
        return NullTracker()
    return MLflowTracker(cfg, run_name, resume_run_id=resume_run_id, parent_run_id=parent_run_id, tags=tags)
