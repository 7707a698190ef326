"""Offline schema validation of manifests: built-in kinds against the upstream Kubernetes JSON schemas
(`kubernetes-validate`, strict: unknown fields are errors), custom resources against their operators' CRDs.

CRD schemas are made strict the way `kubectl apply --validate=strict` treats them: an object schema that lists
its properties and does not declare `x-kubernetes-preserve-unknown-fields` accepts no other keys.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

KUBERNETES_VERSION = "1.32"  # the kubectl on this machine; the schemas of that release
# Custom kinds: (apiVersion, kind) -> CRD file under the shared schemas directory (see its README.md).
CRD_FILES = {
    ("ray.io/v1", "RayCluster"): "kuberay/ray.io_rayclusters.yaml",
    ("ray.io/v1", "RayJob"): "kuberay/ray.io_rayjobs.yaml",
    ("elasticsearch.k8s.elastic.co/v1", "Elasticsearch"): "eck/elasticsearch.k8s.elastic.co_elasticsearches.yaml",
}


class SchemaUnavailable(RuntimeError):
    """A schema source is missing (the CRD directory, or the kubernetes-validate package)."""


@dataclass(frozen=True)
class SchemaError:
    resource: str  # kind/name
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.path or '<root>'}: {self.message}"


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_validator(crd_path: Path, version: str) -> jsonschema.Validator:
    crd = yaml.safe_load(crd_path.read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
            return jsonschema.Draft7Validator(schema)
    raise SchemaUnavailable(f"{crd_path}: no version {version}")


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


def _dotted(path: Any) -> str:
    return ".".join(str(part) for part in path)


def _validate_builtin(doc: dict[str, Any], where: str) -> Iterator[SchemaError]:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
    except ImportError:
        raise SchemaUnavailable("kubernetes-validate is not installed (requirements-dev.txt)") from None
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except ValidationError as exc:
        yield SchemaError(where, _dotted(exc.path), exc.message)
    except SchemaNotFoundError as exc:
        yield SchemaError(where, "", exc.message)


def validate_document(doc: dict[str, Any], crd_dir: Path) -> list[SchemaError]:
    """Every schema violation in one manifest (an empty list: valid)."""
    where = _name(doc)
    crd_file = CRD_FILES.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if crd_file is None:
        return list(_validate_builtin(doc, where))
    path = crd_dir / crd_file
    if not path.is_file():
        raise SchemaUnavailable(f"CRD schema {path} not found")
    version = doc["apiVersion"].rsplit("/", 1)[1]
    errors = [
        SchemaError(where, _dotted(e.absolute_path), e.message) for e in crd_validator(path, version).iter_errors(doc)
    ]
    if doc["kind"] == "Elasticsearch":
        # ECK keeps podTemplate schemaless; check it as the core PodTemplateSpec it is.
        for index, node_set in enumerate(doc.get("spec", {}).get("nodeSets", [])):
            if "podTemplate" in node_set:
                wrapper = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": node_set.get("name", "nodeset")},
                    "template": node_set["podTemplate"],
                }
                errors += [
                    SchemaError(where, f"spec.nodeSets.{index}.podTemplate: {e.path}", e.message)
                    for e in _validate_builtin(wrapper, where)
                ]
    return errors


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
