"""A finished stage's record on the pipeline's parent run, and how a re-submitted pipeline (or a restarted worker
group) skips the stages an earlier attempt finished: each finished stage's result is kept on the parent run
(`pipeline/stages/<name>.json`) and read back instead of training the stage again."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

STAGE_RESULTS_DIR = "pipeline/stages"


def finished_stage_result(client: MlflowClient, parent_run_id: str, stage: str) -> dict[str, Any] | None:
    """The result a previous attempt recorded for `stage`, if its MLflow run finished; else None."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_run_id, f"{STAGE_RESULTS_DIR}/{stage}.json", tmp)
        except (MlflowException, OSError):
            return None
        result = json.loads(Path(path).read_text())
    run_id = result.get("mlflow_run_id")
    if not run_id or client.get_run(str(run_id)).info.status != "FINISHED":
        return None
    return result


def headline_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    """A stage's dev metrics on the parent run, e.g. `student/dev_accuracy`, `reranker/dev_reranker_recall_at_1`."""
    return {
        f"{stage}/dev_{key.removeprefix('dev/')}": float(value)
        for key, value in metrics.items()
        if key.startswith("dev/") and isinstance(value, int | float) and not isinstance(value, bool)
    }


def record_stage_result(client: MlflowClient, parent_run_id: str, stage: str, result: dict[str, Any]) -> None:
    """The stage's result (what later stages and a resumed pipeline read), its headline metrics and its run id on
    the parent run; written by whichever process ran the stage (the driver, or rank 0 of a shared worker group)."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in headline_metrics(stage, result).items()]
    client.log_batch(parent_run_id, metrics=metrics)
    client.set_tag(parent_run_id, f"stage.{stage}.run_id", str(result["mlflow_run_id"]))
    client.log_dict(parent_run_id, result, f"{STAGE_RESULTS_DIR}/{stage}.json")
