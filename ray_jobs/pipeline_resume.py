"""A re-submitted pipeline skips the stages an earlier attempt finished: each finished stage's result is kept
on the parent run (`pipeline/stages/<name>.json`) and read back instead of training the stage again."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

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


def record_stage_result(client: MlflowClient, parent_run_id: str, stage: str, result: dict[str, Any]) -> None:
    client.log_dict(parent_run_id, result, f"{STAGE_RESULTS_DIR}/{stage}.json")
