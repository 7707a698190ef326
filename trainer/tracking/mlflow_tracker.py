"""The single MLflow facade: rank 0 logs, every other rank holds a no-op with the same interface.

MLflow (~1-2 s to import) is imported when a tracker starts or a model is logged, not with this module: the
training loop, the Ray job driver's helpers and the submitter import it, and ranks other than 0 never track.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import retrieval_core
from retrieval_core.model_sources import HF_MODEL_ARTIFACT
from trainer.config.schema import ExperimentConfig, RunConfig, TrackingConfig
from trainer.tracking.redaction import redact_text, redact_value

if TYPE_CHECKING:
    import datasets
    from mlflow.data.dataset import Dataset
    from mlflow.models import ModelSignature
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

DEFAULT_EXPERIMENT = "reasondistill"
MODEL_ARTIFACT_PATH = "model"  # the selected model: what later stages and users load
FINAL_MODEL_ARTIFACT_PATH = "model_final"  # the last step's model, when selection picked an earlier one
_PARAM_BATCH = 100
LAUNCH_TAG = "reasondistill.launch_id"  # one per job submission and run: a restarted worker group finds its run
RESTARTS_TAG = "reasondistill.restarts"
# MLflow 3's UI opens an experiment by this tag (its JS `ExperimentKind`); without it, it guesses "GenAI" and shows
# traces. "custom_model_development" is the kind its selector calls "Machine learning": the training-runs view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
CANDIDATE_ALIAS = "candidate"  # the alias `tracking.register_as` moves to each newly registered version


@dataclass(frozen=True)
class PyfuncSpec:
    """How an exported model directory is logged: a "model from code" file, extra artifacts, and its signature
    (built when a model is logged: the signature types are MLflow's)."""

    python_model: Path
    signature: Callable[[], ModelSignature]
    artifacts: dict[str, Path] = field(default_factory=dict)


def _seq2seq_signature() -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "input")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 0), ParamSpec("batch_size", "long", 32)]),
    )


def _reranker_signature() -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec("string", "query"), ColSpec(Array("string"), "passages")]),
        outputs=Schema([ColSpec(Array("double"))]),
    )


SEQ2SEQ_PYFUNC = PyfuncSpec(python_model=Path(__file__).with_name("seq2seq_pyfunc.py"), signature=_seq2seq_signature)
RERANKER_PYFUNC = PyfuncSpec(
    python_model=Path(__file__).with_name("reranker_pyfunc.py"),
    signature=_reranker_signature,
    # by path: importing it here would load torch and transformers with every tracker
    artifacts={"late_interaction": Path(retrieval_core.__file__).with_name("late_interaction.py")},
)


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Config, then MLFLOW_TRACKING_URI, then a SQLite store in the working directory."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_experiment(cfg: TrackingConfig) -> str:
    return cfg.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def training_view_url(ui_base: str, tracking_uri: str, experiment: str) -> str:
    """The UI link that lands on the experiment's training runs.

    MLflow 3.17's UI picks GenAI or Model training from a browser-wide toggle that starts on GenAI and ignores the
    experiment-kind tag while it is on; `workflowType=machine_learning` in the URL sets that toggle.
    """
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    page = f"experiments/{found.experiment_id}" if found is not None else "experiments"
    return f"{ui_base.rstrip('/')}/#/{page}?workflowType=machine_learning"


def huggingface_input(dataset: datasets.Dataset, name: str, digest: str, source: str) -> Dataset:
    """A Hugging Face dataset as an MLflow dataset for `log_input` (name, digest, schema and row count in the UI)."""
    from mlflow.data.huggingface_dataset import from_huggingface  # what mlflow.data registers under that name

    return from_huggingface(dataset, name=name, digest=digest, source=source)


def _short_model_name(name: str) -> str:
    """A model as a run name shows it: a hub name or preset as is, a local path or `runs:/` URI by its last parts."""
    if name.startswith("runs:/"):
        run_id, _, artifact = name.removeprefix("runs:/").partition("/")
        return f"run {run_id[:8]}/{artifact}"
    return Path(name).name if name.startswith(("/", ".")) else name


def run_identity(cfg: ExperimentConfig, method: str, run_tags: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """A run's name (`tracking.run_name_template`) and the tags the UI's filters and Group by use, so a runs table
    reads without opening runs: `<stage or method> · <dataset> · <model> · seed <n>`."""
    named = cfg.run.name != RunConfig.model_fields["name"].default  # a run.name the user chose names the run
    fields = {
        "name": cfg.tracking.run_name or (cfg.run.name if named else method),
        "method": method,
        "dataset": cfg.data.dataset,
        # an evaluate stage's model is an earlier stage's runs:/ URI: named by that stage
        "model": (
            f"model of {run_tags['evaluates_stage']}"
            if "evaluates_stage" in run_tags
            else _short_model_name(cfg.model.name)
        ),
        "seed": str(cfg.run.seed),
        "pipeline": run_tags.get("pipeline", ""),
        "stage": run_tags.get("stage", ""),
    }
    tags = {"method": method, "dataset": cfg.data.dataset, "model": cfg.model.name, "seed": fields["seed"]}
    return cfg.tracking.run_name_template.format(**fields), tags


def _local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store, not in the process's cwd (a Ray job's cwd is a temp copy)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


class MLflowTracker:
    """Logs one run; creates it or re-opens it (resume) and optionally nests it under a parent run.

    Metrics go through a `MetricBuffer`: training never waits for MLflow, an outage only delays delivery, and
    (key, step) pairs the run already has are not logged twice, so a resumed run replaying the steps since its
    last checkpoint leaves one value per step. Params, tags and artifacts pass through `redaction`.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str,
        resume_run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        launch_id: str | None = None,
        system_metrics: bool = False,
    ) -> None:
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        from trainer.tracking.metric_buffer import MetricBuffer

        self.tracking_uri = resolve_tracking_uri(cfg)
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self._experiment_id(resolve_experiment(cfg))
        resume_run_id = resume_run_id or (self._run_of_launch(launch_id) if launch_id else None)
        self.resumed = resume_run_id is not None
        if resume_run_id:
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run_tags = {**cfg.tags, **(tags or {}), **({LAUNCH_TAG: launch_id} if launch_id else {})}
            if parent_run_id:
                run_tags["mlflow.parentRunId"] = parent_run_id
            run_tags = {k: str(redact_value(k, v)) for k, v in run_tags.items()}
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags).info.run_id
        self.metrics = MetricBuffer(
            self.client, self.run_id, cfg.max_buffered_metrics, cfg.max_outage_s, self.tracking_uri
        )
        if self.resumed:
            self.metrics.skip_logged(list(self.client.get_run(self.run_id).data.metrics))
        self._system_metrics = self._start_system_metrics(cfg) if system_metrics else None

    def _start_system_metrics(self, cfg: TrackingConfig) -> SystemMetricsMonitor:
        """MLflow's sampler thread (CPU, memory, disk, network; GPUs where pynvml finds them) logging `system/*`
        into this run; a resumed run continues its steps."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=cfg.system_metrics_interval_s,
            resume_logging=self.resumed,
            tracking_uri=self.tracking_uri,
        )
        monitor.start()
        return monitor

    def _run_of_launch(self, launch_id: str) -> str | None:
        """The run this launch already created (a worker group restarted before its first checkpoint)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{LAUNCH_TAG}` = '{launch_id}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # one a user set stays
                self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
            return experiment.experiment_id
        try:
            root = _local_artifact_root(self.tracking_uri)
            return self.client.create_experiment(
                name,
                artifact_location=f"{root}/{name}" if root else None,
                tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND},
            )
        except MlflowException:
            # Another process created it between our lookup and create.
            existing = self.client.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(redact_value(k, v))[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _PARAM_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue for delivery; raises TrackingUnavailableError once MLflow has been unreachable too long."""
        self.metrics.add(metrics, step)

    def pending_metrics(self) -> list[list[Any]]:
        """Metrics not yet delivered, as checkpointable rows (a restart re-queues them: no silent loss)."""
        return self.metrics.pending()

    def requeue_metrics(self, rows: list[list[Any]]) -> None:
        self.metrics.requeue(rows)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(redact_value(key, value)))

    def run_tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def record_restart(self, from_step: int, launch_id: str | None) -> None:
        """Tag a run that started again: how often, from which step, and whether Ray Train restarted its
        worker group (same launch) or the job was submitted again."""
        tags = self.run_tags()
        count = int(tags.get(RESTARTS_TAG, "0")) + 1
        same_launch = launch_id is not None and tags.get(LAUNCH_TAG) == launch_id
        cause = "worker group restarted by Ray Train" if same_launch else "job submitted again"
        self.set_tags(
            {
                RESTARTS_TAG: str(count),
                f"{RESTARTS_TAG}.{count}": f"resumed from step {from_step}: {cause}",
                "resumed_from_step": str(from_step),
                **({LAUNCH_TAG: launch_id} if launch_id else {}),
            }
        )

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, redact_value("", data), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact_text(text), artifact_file)

    def log_jsonl(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent) or None)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows as an MLflow table artifact, browsable in the run's Artifacts tab and the Evaluation view."""
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_input(self, dataset: Dataset, context: str) -> None:
        """Record a dataset as this run's input (the UI's Dataset column): the training features, KARD's knowledge."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])

    def log_model(self, export_dir: Path, spec: PyfuncSpec = SEQ2SEQ_PYFUNC, name: str = MODEL_ARTIFACT_PATH) -> str:
        """Log an exported HF dir as a pyfunc model; returns its `runs:/` URI."""
        import mlflow
        from mlflow.entities import RunStatus

        mlflow.set_tracking_uri(self.tracking_uri)
        artifacts = {HF_MODEL_ARTIFACT: str(export_dir), **{k: str(v) for k, v in spec.artifacts.items()}}
        with mlflow.start_run(run_id=self.run_id, experiment_id=self.experiment_id):
            mlflow.pyfunc.log_model(
                name=name,
                python_model=str(spec.python_model),
                artifacts=artifacts,
                signature=spec.signature(),
                pip_requirements=[f"mlflow=={mlflow.__version__}", "torch", "transformers", "pandas"],
            )
        # Leaving the fluent context marks the run finished; training still owns its status.
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return f"runs:/{self.run_id}/{name}"

    def register_model(self, name: str, model_uri: str, metrics: Mapping[str, float]) -> str:
        """A new version of registered model `name` from `model_uri`, with `candidate` moved to it and the run's
        metrics as version tags (the registry's list shows them); returns the version. MLflow's `register_model`
        resolves a `runs:/` URI to the logged model MLflow 3 stores outside the run's artifacts."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        tags = {key: f"{value:.6g}" for key, value in metrics.items()}
        version = str(mlflow.register_model(model_uri, name, tags=tags).version)
        self.client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)
        self.set_tags({"registered_model": f"{name}/{version}"})
        return version

    def flush(self) -> None:
        """Deliver every queued metric, or raise TrackingUnavailableError after the configured outage limit."""
        self.metrics.flush()

    def finish(self, status: str = "FINISHED") -> None:
        try:
            if self._system_metrics is not None:
                self._system_metrics.finish()
            self.metrics.close()
        finally:
            self.client.set_terminated(self.run_id, status=status)


class NullTracker:
    """Stands in on non-zero ranks so callers never branch on rank."""

    run_id: str | None = None
    resumed = False

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def pending_metrics(self) -> list[list[Any]]:
        return []

    def requeue_metrics(self, rows: list[list[Any]]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def run_tags(self) -> dict[str, str]:
        return {}

    def record_restart(self, from_step: int, launch_id: str | None) -> None: ...

    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_jsonl(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...
    def log_input(self, dataset: Dataset, context: str) -> None: ...
    def log_model(
        self, export_dir: Path, spec: PyfuncSpec = SEQ2SEQ_PYFUNC, name: str = MODEL_ARTIFACT_PATH
    ) -> str | None: ...
    def register_model(self, name: str, model_uri: str, metrics: Mapping[str, float]) -> str | None: ...
    def flush(self) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


Tracker = MLflowTracker | NullTracker


def create_tracker(
    cfg: TrackingConfig,
    is_rank_zero: bool,
    run_name: str,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    launch_id: str | None = None,
) -> Tracker:
    """MLflow on rank 0 only: one run per training job however many workers it has; rank 0 also samples its
    machine's system metrics when `tracking.system_metrics` is on."""
    if not is_rank_zero:
        return NullTracker()
    return MLflowTracker(
        cfg,
        run_name,
        resume_run_id=resume_run_id,
        parent_run_id=parent_run_id,
        tags=tags,
        launch_id=launch_id,
        system_metrics=cfg.system_metrics,
    )
