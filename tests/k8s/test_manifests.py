"""Every kustomization under k8s/ renders, validates against the Kubernetes schemas and the KubeRay/ECK CRDs,
and holds what the platform promises (groups, probes, volumes, network paths)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ray_jobs.k8s.validation import validate_document

KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/gpu"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_manifest_validates(name: str, kustomized, crd_dir: Path) -> None:
    docs = kustomized[name]
    assert len(docs) >= 20
    errors = [str(e) for doc in docs for e in validate_document(doc, crd_dir)]
    assert errors == []
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"reasondistill"}


def test_validation_is_strict(kustomized, crd_dir: Path, find) -> None:
    """Typos must fail: unknown fields in a custom resource, a built-in kind and ECK's embedded pod template."""
    docs = kustomized["base"]
    ray = copy.deepcopy(find(docs, "RayCluster", "reasondistill"))
    ray["spec"]["workerGroupSpecs"][0]["replica"] = 2
    ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = []
    messages = [e.message for e in validate_document(ray, crd_dir)]
    assert any("'replica' was unexpected" in m for m in messages) and len(messages) == 2
    deployment = copy.deepcopy(find(docs, "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    assert any("paht" in e.message for e in validate_document(deployment, crd_dir))
    elasticsearch = copy.deepcopy(find(docs, "Elasticsearch", "kard"))
    elasticsearch["spec"]["nodeSets"][0]["podTemplate"]["spec"]["containers"][0]["resource"] = {}
    assert any("podTemplate" in e.path for e in validate_document(elasticsearch, crd_dir))
    del elasticsearch["spec"]["version"]
    assert any("'version' is a required property" in e.message for e in validate_document(elasticsearch, crd_dir))


def test_ray_cluster_shape(kustomized, find) -> None:
    spec = find(kustomized["base"], "RayCluster", "reasondistill")["spec"]
    assert spec["rayVersion"] == "2.60.0" and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "ray-checkpoints"
        mounts = {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert {"/dev/shm", "/mnt/checkpoints", "/data/shared", "/tmp"} <= mounts
        container = group["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": "reasondistill-endpoints"}} in container["envFrom"]
    checkpoints = find(kustomized["base"], "PersistentVolumeClaim", "ray-checkpoints")
    assert checkpoints["spec"]["accessModes"] == ["ReadWriteMany"]
    endpoints = find(kustomized["base"], "ConfigMap", "reasondistill-endpoints")["data"]
    assert endpoints["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and endpoints["RETRIEVAL_URL"].startswith("http://")


def test_mlflow_postgres_and_proxied_artifacts(kustomized, find) -> None:
    docs = kustomized["base"]
    container = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--serve-artifacts" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-backend-store"
    assert "configMapKeyRef" in env["MLFLOW_ARTIFACTS_DESTINATION"]["valueFrom"]
    assert find(docs, "ConfigMap", "mlflow-artifacts")["data"]["destination"].startswith("s3://")
    assert container["readinessProbe"]["httpGet"]["path"] == "/health" and "livenessProbe" in container
    postgres = find(docs, "StatefulSet", "mlflow-postgres")["spec"]
    assert postgres["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert "readinessProbe" in postgres["template"]["spec"]["containers"][0]


def test_elasticsearch_index_job_and_retrieval_service(kustomized, find) -> None:
    docs = kustomized["base"]
    es = find(docs, "Elasticsearch", "kard")["spec"]
    assert es["version"].startswith("9.") and es["nodeSets"][0]["count"] == 3
    job = find(docs, "Job", "retrieval-index-wikipedia")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:4] == ["index", "--backend", "elasticsearch", "--rebuild"]
    service = find(docs, "Deployment", "retrieval-wikipedia")["spec"]["template"]["spec"]["containers"][0]
    assert service["args"][:3] == ["serve", "--backend", "elasticsearch"]
    assert service["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert service["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in service["env"]}
    assert env["RETRIEVAL_API_TOKEN_FILE"]["value"].startswith("/var/run/secrets/")
    assert env["ELASTICSEARCH_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "kard-es-reader"
    assert env["ELASTICSEARCH_PASSWORD_FILE"]["value"].startswith("/var/run/secrets/")
    # serve --reranker from the same image, when the corpus names one; MLflow's URL comes with the endpoints
    reranker = env["RETRIEVAL_RERANKER"]["valueFrom"]["configMapKeyRef"]
    assert reranker["key"] == "reranker" and reranker["optional"] is True
    assert {"configMapRef": {"name": "reasondistill-endpoints"}} in service["envFrom"]
    hpa = find(docs, "HorizontalPodAutoscaler", "retrieval-wikipedia")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "retrieval-wikipedia" and hpa["maxReplicas"] > hpa["minReplicas"]
    assert find(docs, "Service", "retrieval-wikipedia")["spec"]["selector"]["reasondistill.io/corpus"] == "wikipedia"


def test_only_training_pods_reach_mlflow_and_retrieval(kustomized, find) -> None:
    """Training pods reach both; the retrieval services reach MLflow too, to read the reranker they serve."""
    docs = kustomized["base"]
    assert find(docs, "NetworkPolicy", "default-deny-ingress")["spec"]["podSelector"] == {}
    for policy, role, port, clients in (
        ("mlflow-from-training", "mlflow", 5000, ["training", "retrieval"]),
        ("retrieval-from-training", "retrieval", 8000, ["training"]),
    ):
        spec = find(docs, "NetworkPolicy", policy)["spec"]
        assert spec["podSelector"]["matchLabels"] == {"reasondistill.io/role": role}
        assert spec["ingress"] == [
            {
                "from": [{"podSelector": {"matchLabels": {"reasondistill.io/role": c}}} for c in clients],
                "ports": [{"protocol": "TCP", "port": port}],
            }
        ]
    # Every pod the policies are meant for carries its role label.
    roles = {
        d["spec"]["template"]["metadata"]["labels"].get("reasondistill.io/role")
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    }
    assert roles == {"mlflow", "postgres", "retrieval", "indexer"}


def test_overlays(kustomized, find) -> None:
    dev = find(kustomized["overlays/dev"], "RayCluster", "reasondistill")["spec"]
    assert [g["groupName"] for g in dev["workerGroupSpecs"]] == ["cpu"]
    assert find(kustomized["overlays/dev"], "Elasticsearch", "kard")["spec"]["nodeSets"][0]["count"] == 1
    images = {
        c["image"]
        for d in kustomized["overlays/dev"]
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"reasondistill/mlflow:dev", "reasondistill/retrieval:dev"}
    gpu_docs = kustomized["overlays/gpu"]
    find(gpu_docs, "Deployment", "retrieval-pubmed")
    job = find(gpu_docs, "Job", "retrieval-index-pubmed")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith("/retrieval:0.1.0")
    gpu_group = find(gpu_docs, "RayCluster", "reasondistill")["spec"]["workerGroupSpecs"][1]
    assert gpu_group["maxReplicas"] == 4


def test_rayjob_skeleton_is_a_valid_rayjob(crd_dir: Path) -> None:
    skeleton = yaml.safe_load((Path(__file__).resolve().parents[2] / "k8s" / "rayjob" / "rayjob.yaml").read_text())
    assert validate_document(skeleton, crd_dir) == []
