"""Rendered kustomize trees and the schema directory, shared by the manifest tests.

No Kubernetes cluster runs here: manifests are rendered with `kubectl kustomize` (client side, no API server)
and validated offline against the upstream schemas and the operators' CRDs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ray_jobs.k8s.validation import load_documents

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT.parent / "shared" / "schemas"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/gpu"]


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    if not (SCHEMAS / "kuberay" / "ray.io_rayjobs.yaml").is_file():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (the KubeRay and ECK CRDs, see ../shared/schemas/README.md)")
    return SCHEMAS


@pytest.fixture(scope="session")
def kustomized() -> dict[str, list[dict[str, Any]]]:
    """Each kustomization under k8s/, rendered once per session."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (for `kubectl kustomize`) is not on PATH")
    out = {}
    for name in KUSTOMIZATIONS:
        built = subprocess.run(
            ["kubectl", "kustomize", str(REPO_ROOT / "k8s" / name)], check=True, capture_output=True, text=True
        )
        out[name] = load_documents(built.stdout)
    return out


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="session")
def find():
    """find(docs, kind, name): the one manifest of that kind and name."""
    return _find
