"""Security lint for rendered manifests: what the platform promises about every pod, checked offline.

Every pod template (Deployments, StatefulSets, Jobs, RayCluster/RayJob groups, the RayJob submitter, ECK node
sets): non-root, no privilege escalation or privileged mode, all capabilities dropped, read-only root
filesystem, no host namespaces or hostPath, CPU and memory requests and limits on every container. Secrets:
no credential in an env literal, a ConfigMap, a Ray runtime env or a URI's userinfo; no Secret with data in
the manifests unless it is marked as holding none (reasondistill.io/contains-credentials: "false").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

NO_CREDENTIALS_ANNOTATION = "reasondistill.io/contains-credentials"
# Names that hold a credential when they hold a value (whole words of the name: TOKENIZERS_* is no token);
# a *_FILE path, *_URL or *_ID is fine.
SECRET_NAME = re.compile(
    r"(^|[_.-])(PASSWORD|PASSWD|SECRET|TOKEN|APIKEY|API[_.-]KEY|ACCESS[_.-]KEY|PRIVATE[_.-]KEY|CREDENTIALS?)($|[_.-])",
    re.I,
)
SAFE_NAME_SUFFIX = re.compile(r"[_.-](FILE|PATH|DIR|URL|URI|ID|ENV|USERNAME)$", re.I)
CREDENTIAL_URI = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)
KNOWN_KEY_SHAPES = re.compile(
    r"(AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|ghp_[0-9A-Za-z]{30,}|hf_[0-9A-Za-z]{30,})"
)
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}


@dataclass(frozen=True)
class Finding:
    resource: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.path}: {self.message}"


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, pod template) for every pod a manifest creates."""
    kind, spec = doc.get("kind"), doc.get("spec", {}) or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield "spec.template", spec.get("template", {})
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template", spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
    elif kind == "Pod":
        yield "", doc
    elif kind == "RayCluster":
        yield from _ray_cluster_templates("spec", spec)
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from _ray_cluster_templates("spec.rayClusterSpec", spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]
    elif kind == "Elasticsearch":
        for index, node_set in enumerate(spec.get("nodeSets", [])):
            yield f"spec.nodeSets.{index}.podTemplate", node_set.get("podTemplate", {})


def _ray_cluster_templates(prefix: str, spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield f"{prefix}.headGroupSpec.template", spec.get("headGroupSpec", {}).get("template", {})
    for index, group in enumerate(spec.get("workerGroupSpecs", [])):
        yield f"{prefix}.workerGroupSpecs.{index}.template", group.get("template", {})


def _lint_env(where: str, path: str, name: str, value: Any) -> Iterator[Finding]:
    text = "" if value is None else str(value)
    if text and SECRET_NAME.search(name) and not SAFE_NAME_SUFFIX.search(name):
        yield Finding(where, path, f"{name} has a literal value; credentials come from a Secret (secretKeyRef/file)")
    if CREDENTIAL_URI.search(text):
        yield Finding(where, path, f"{name} holds a URI with a password")
    if KNOWN_KEY_SHAPES.search(text):
        yield Finding(where, path, f"{name} holds what looks like a key or token")


def _lint_pod(where: str, base: str, template: dict[str, Any]) -> Iterator[Finding]:
    spec = template.get("spec", {}) or {}
    pod_security = spec.get("securityContext", {}) or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield Finding(where, f"{base}.spec.{field}", "host namespaces are not allowed")
    for index, volume in enumerate(spec.get("volumes", []) or []):
        if "hostPath" in volume:
            yield Finding(where, f"{base}.spec.volumes.{index}", "hostPath volumes are not allowed")
    if pod_security.get("runAsUser") == 0:
        yield Finding(where, f"{base}.spec.securityContext.runAsUser", "runs as root")
    groups = (("initContainers", spec.get("initContainers") or []), ("containers", spec.get("containers") or []))
    for group, containers in groups:
        for index, container in enumerate(containers):
            path = f"{base}.spec.{group}.{index}"
            security = container.get("securityContext", {}) or {}
            non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
            if non_root is not True:
                yield Finding(where, path, "runAsNonRoot is not true (pod or container securityContext)")
            if security.get("runAsUser") == 0:
                yield Finding(where, f"{path}.securityContext.runAsUser", "runs as root")
            if security.get("privileged"):
                yield Finding(where, f"{path}.securityContext.privileged", "privileged container")
            if security.get("allowPrivilegeEscalation") is not False:
                yield Finding(where, path, "allowPrivilegeEscalation is not false")
            capabilities = security.get("capabilities", {}) or {}
            if "ALL" not in (capabilities.get("drop") or []):
                yield Finding(where, path, "capabilities do not drop ALL")
            added = set(capabilities.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
            if added:
                yield Finding(where, path, f"adds capabilities {sorted(added)}")
            if security.get("readOnlyRootFilesystem") is not True:
                yield Finding(where, path, "readOnlyRootFilesystem is not true")
            resources = container.get("resources", {}) or {}
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(kind, {}) or {})
                if missing:
                    yield Finding(where, f"{path}.resources.{kind}", f"no {', '.join(sorted(missing))}")
            image = str(container.get("image", ""))
            if image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                yield Finding(where, f"{path}.image", f"{image}: pin a tag (not latest)")
            for env_index, env in enumerate(container.get("env", []) or []):
                yield from _lint_env(where, f"{path}.env.{env_index}", env.get("name", ""), env.get("value"))


def lint_document(doc: dict[str, Any]) -> list[Finding]:
    where = f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"
    findings: list[Finding] = []
    for path, template in pod_templates(doc):
        findings += _lint_pod(where, path, template)
    kind = doc.get("kind")
    if kind == "ConfigMap":
        for key, value in (doc.get("data") or {}).items():
            findings += _lint_env(where, f"data.{key}", key, value)
    elif kind == "Secret" and (doc.get("data") or doc.get("stringData")):
        marked = (doc.get("metadata", {}).get("annotations") or {}).get(NO_CREDENTIALS_ANNOTATION) == "false"
        if not marked:
            findings.append(
                Finding(where, "data", "a Secret with values in the manifests; create credentials with kubectl")
            )
    elif kind == "RayJob":
        runtime_env = yaml.safe_load(doc.get("spec", {}).get("runtimeEnvYAML") or "") or {}
        for name, value in (runtime_env.get("env_vars") or {}).items():
            findings += _lint_env(where, f"spec.runtimeEnvYAML.env_vars.{name}", name, value)
    return findings
