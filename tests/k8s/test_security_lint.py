"""The security lint passes on everything k8s/ renders and flags each violation in a deliberately bad manifest."""

from __future__ import annotations

import pytest
import yaml

from ray_jobs.k8s.lint import lint_document, pod_templates

KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/gpu"]

BAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: bad}}
  template:
    metadata: {labels: {app: bad}}
    spec:
      hostNetwork: true
      securityContext: {runAsUser: 0}
      containers:
        - name: app
          image: example/app:latest
          env:
            - {name: DB_PASSWORD, value: hunter2}
            - {name: MLFLOW_TRACKING_URI, value: "postgresql://mlflow:s3cret@db:5432/mlflow"}
            - {name: OK_PASSWORD_FILE, value: /var/run/secrets/db/password}
            - {name: TOKENIZERS_PARALLELISM, value: "false"}
          securityContext: {privileged: true, capabilities: {add: [SYS_ADMIN]}}
          resources: {requests: {cpu: "1"}}
      volumes:
        - {name: host, hostPath: {path: /var/run/docker.sock}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: leaky}
data:
  api-token: abc123
  endpoint: http://mlflow:5000
  aws: AKIAABCDEFGHIJKLMNOP
---
apiVersion: v1
kind: Secret
metadata: {name: committed}
stringData: {password: hunter2}
---
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: leaky-job}
spec:
  entrypoint: python -m ray_jobs.train_job
  runtimeEnvYAML: |
    env_vars:
      MLFLOW_TRACKING_TOKEN: abc
  submitterPodTemplate:
    spec:
      containers:
        - name: submit
          image: example/job:1
          resources: {requests: {cpu: "1", memory: 1Gi}, limits: {cpu: "1", memory: 1Gi}}
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
"""


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_manifests_pass(name: str, kustomized) -> None:
    findings = [str(f) for doc in kustomized[name] for f in lint_document(doc)]
    assert findings == []


def test_every_pod_of_the_platform_is_covered(kustomized) -> None:
    """The lint must see every pod template, including the ones inside custom resources."""
    paths = {(d["kind"], path) for d in kustomized["overlays/gpu"] for path, _ in pod_templates(d)}
    assert ("RayCluster", "spec.workerGroupSpecs.1.template") in paths
    assert ("Elasticsearch", "spec.nodeSets.0.podTemplate") in paths
    assert ("StatefulSet", "spec.template") in paths and ("Job", "spec.template") in paths


def test_bad_manifest_is_flagged_on_every_rule() -> None:
    findings = [str(f) for doc in yaml.safe_load_all(BAD) for f in lint_document(doc)]
    expected = [
        "Deployment/bad: spec.template.spec.hostNetwork: host namespaces",
        "Deployment/bad: spec.template.spec.volumes.0: hostPath",
        "Deployment/bad: spec.template.spec.securityContext.runAsUser: runs as root",
        "runAsNonRoot is not true",
        "spec.template.spec.containers.0.securityContext.privileged: privileged container",
        "allowPrivilegeEscalation is not false",
        "capabilities do not drop ALL",
        "adds capabilities ['SYS_ADMIN']",
        "readOnlyRootFilesystem is not true",
        "spec.template.spec.containers.0.resources.requests: no memory",
        "spec.template.spec.containers.0.resources.limits: no cpu, memory",
        "example/app:latest: pin a tag",
        "DB_PASSWORD has a literal value",
        "MLFLOW_TRACKING_URI holds a URI with a password",
        "ConfigMap/leaky: data.api-token: api-token has a literal value",
        "ConfigMap/leaky: data.aws: aws holds what looks like a key",
        "Secret/committed: data: a Secret with values in the manifests",
        "RayJob/leaky-job: spec.runtimeEnvYAML.env_vars.MLFLOW_TRACKING_TOKEN",
    ]
    for fragment in expected:
        assert any(fragment in f for f in findings), f"not flagged: {fragment}\n" + "\n".join(findings)
    assert not any("OK_PASSWORD_FILE" in f or "TOKENIZERS_PARALLELISM" in f for f in findings)
    assert not any("endpoint" in f for f in findings)
    assert not any("leaky-job: spec.submitterPodTemplate" in f for f in findings)  # that pod is compliant
