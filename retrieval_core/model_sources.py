"""MLflow model URIs of this project's logged models, resolved to the local HF directory they carry.

Shared by the trainer (teachers, tokenizers, rerankers named by run) and the retrieval service (`serve --reranker
runs:/…`), so both read the artifact layout the trainer's tracker writes. mlflow is imported only to resolve a URI.
"""

from __future__ import annotations

from pathlib import Path

HF_MODEL_ARTIFACT = "hf_model"  # the artifact key every pyfunc loads the exported HF directory from
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(source: str) -> bool:
    return source.startswith(MLFLOW_SCHEMES)


def mlflow_model_directory(source: str, tracking_uri: str | None = None) -> str:
    """Download the MLflow-logged model `source` (our pyfunc wrapper) and return its HF directory."""
    import mlflow
    import yaml

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
