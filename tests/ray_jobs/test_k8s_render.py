"""`python -m ray_jobs.k8s render`: RayJobs for a training config and a pipeline carry the submitter's payload
with cluster paths and URIs, are sized from the plan, validate against the KubeRay CRD and pass the lint.
No Kubernetes cluster runs here: the manifests are checked offline (see tests/k8s)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_jobs.job_payload import PAYLOAD_ENV, decode_payload
from ray_jobs.k8s.__main__ import main
from ray_jobs.k8s.lint import lint_document
from ray_jobs.k8s.render import render
from ray_jobs.k8s.validation import validate_document
from ray_jobs.pipeline import PipelinePlan
from trainer.config.loader import ConfigError
from trainer.config.schema import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT.parent / "shared" / "schemas"
DEMO = str(REPO_ROOT / "ray_jobs" / "configs" / "demo.yaml")
PIPELINE = str(REPO_ROOT / "ray_jobs" / "configs" / "knife_synthetic.yaml")
IMAGE = "registry.example.com/reasondistill/job:0.1.0"
GPU_RUN = [
    "model.name=t5-3b",
    "run.use_gpu=true",
    "run.num_workers=16",
    "run.cpus_per_worker=4",
    "ds.zero_stage=auto",
    "ds.precision=bf16",
    "optim.micro_batch_size=8",
    "data.max_input_length=512",
    "data.max_target_length=128",
]


@pytest.fixture(scope="module")
def crd_dir() -> Path:
    if not (SCHEMAS / "kuberay" / "ray.io_rayjobs.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not found at {SCHEMAS} (see ../shared/schemas/README.md)")
    return SCHEMAS


def env_vars(manifest: dict) -> dict[str, str]:
    return yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])["env_vars"]


def checked(manifest: dict, crd_dir: Path) -> dict:
    assert [str(e) for e in validate_document(manifest, crd_dir)] == []
    assert [str(f) for f in lint_document(manifest)] == []
    return manifest


def test_training_config(crd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The submitter's own MLflow store and credentials must not leak into the manifest.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////home/me/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "local-secret-token")
    rendered = render([DEMO], image=IMAGE)
    job = checked(rendered.manifest, crd_dir)
    assert job["spec"]["entrypoint"] == "python -m ray_jobs.train_job"
    env = env_vars(job)
    assert "MLFLOW_TRACKING_TOKEN" not in env and "local-secret-token" not in yaml.safe_dump(job)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    cfg = decode_payload(ExperimentConfig, env[PAYLOAD_ENV])
    assert cfg.tracking.tracking_uri == "http://mlflow:5000" and cfg.tracking.experiment == "reasondistill-demo"
    assert cfg.run.storage_path == "/mnt/checkpoints/ray"
    assert cfg.run.output_dir == "/tmp/reasondistill/runs"
    assert cfg.data.data_dir == "/data/shared"
    cluster = job["spec"]["rayClusterSpec"]
    assert "enableInTreeAutoscaling" not in cluster
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] == "cpu" and group["replicas"] == group["maxReplicas"] == cfg.run.num_workers == 2
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"] and resources["limits"]["cpu"] == "2"
    images = {c["image"] for g in [cluster["headGroupSpec"], group] for c in g["template"]["spec"]["containers"]}
    assert images == {IMAGE} and job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == IMAGE


def test_gpu_run_is_sized_from_the_plan(crd_dir: Path) -> None:
    rendered = render([DEMO, *GPU_RUN], image=IMAGE)
    job = checked(rendered.manifest, crd_dir)
    cfg = decode_payload(ExperimentConfig, env_vars(job)[PAYLOAD_ENV])
    assert cfg.ds.zero_stage == 2 and cfg.ds.template == "zero2"  # auto, resolved before the job exists
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu" and group["replicas"] == 2  # 16 GPUs on 8-GPU nodes
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8" and limits["cpu"] == "33"
    assert group["rayStartParams"]["num-cpus"] == "32" and group["rayStartParams"]["num-gpus"] == "8"
    (estimate,) = rendered.estimates.values()
    memory_gib = int(limits["memory"].removesuffix("Gi"))
    assert memory_gib * 2**30 >= estimate.host_bytes_per_node
    dshm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": "12Gi"}
    assert "ZeRO-2" in job["metadata"]["annotations"]["reasondistill.io/plan"]


def test_pipeline(crd_dir: Path) -> None:
    rendered = render([PIPELINE, "run.num_workers=3"], image=IMAGE, namespace="research")
    job = checked(rendered.manifest, crd_dir)
    assert job["metadata"]["namespace"] == "research"
    assert job["spec"]["entrypoint"] == "python -m ray_jobs.pipeline_job"
    plan = decode_payload(PipelinePlan, env_vars(job)[PAYLOAD_ENV])
    assert [s.name for s in plan.stages][:2] == ["teacher", "knife_student"]
    assert {s.config.tracking.tracking_uri for s in plan.stages} == {"http://mlflow:5000"}
    assert {s.config.run.storage_path for s in plan.stages} == {"/mnt/checkpoints/ray"}
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert job["metadata"]["name"].startswith("knife-synthetic-")


def test_overlay_and_existing_cluster(crd_dir: Path) -> None:
    rendered = render([DEMO], image=IMAGE, kustomize_dir=REPO_ROOT / "k8s" / "overlays" / "dev")
    job = checked(rendered.manifest, crd_dir)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "3Gi"  # the dev overlay's
    assert head["template"]["spec"]["containers"][0]["image"] == IMAGE
    existing = render([DEMO], image=IMAGE, existing_cluster="reasondistill").manifest
    checked(existing, crd_dir)
    assert existing["spec"]["clusterSelector"] == {"ray.io/cluster": "reasondistill"}
    assert "rayClusterSpec" not in existing["spec"] and existing["spec"]["shutdownAfterJobFinishes"] is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tracking.tracking_uri=sqlite:///mlflow.db", "tracking.tracking_uri=sqlite:///mlflow.db: a store on this"),
        ("tracking.tracking_uri=http://127.0.0.1:5000", "loopback"),
        ("tracking.tracking_uri=http://user:pw@mlflow:5000", "carries a password"),
        ("run.storage_path=runs/ray", "run.storage_path=runs/ray: a relative path"),
        ("run.storage_path=/home/me/ray", "run.storage_path=/home/me/ray: not on a volume"),
        ("run.storage_path=/data/shared/ray", "not on a volume the pods mount (/mnt/checkpoints)"),
        ("data.data_dir=../shared/data", "data.data_dir=../shared/data: a relative path"),
        ("model.name=./my-model", "model.name=./my-model: a relative path"),
        ("retrieval.url=http://localhost:8000", "retrieval.url=http://localhost:8000: in a pod, loopback"),
    ],
)
def test_local_paths_and_uris_fail_with_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        render([DEMO, override, "retrieval.mode=http"], image=IMAGE)


def test_a_methods_own_paths_and_models_are_checked_against_the_pods_mounts() -> None:
    """Declared in the method's section (LocalPath / ModelSource), checked without the renderer naming them."""
    with pytest.raises(ConfigError, match=re.escape("method.kard.knowledge=knowledge/kb: a relative path")):
        render([DEMO, "method.name=kard", "method.kard.knowledge=knowledge/kb"], image=IMAGE)
    with pytest.raises(ConfigError, match=re.escape("method.knife.teacher=./teacher: a relative path")):
        render([DEMO, "method.name=knife_student", "method.knife.teacher=./teacher"], image=IMAGE)


def test_retrieval_defaults_to_the_in_cluster_service() -> None:
    job = render([DEMO, "retrieval.mode=http"], image=IMAGE).manifest
    assert (
        decode_payload(ExperimentConfig, env_vars(job)[PAYLOAD_ENV]).retrieval.url == "http://retrieval-wikipedia:8000"
    )
    job = render([DEMO, "retrieval.mode=elasticsearch"], image=IMAGE).manifest
    assert decode_payload(ExperimentConfig, env_vars(job)[PAYLOAD_ENV]).retrieval.url == "https://kard-es-http:9200"


def test_cli_writes_the_manifest_and_exits_2_on_bad_input(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("REASONDISTILL_IMAGE", raising=False)
    out = tmp_path / "job.yaml"
    assert main(["render", DEMO, "--image", IMAGE, "--output", str(out), "--name", "my-run"]) == 0
    assert yaml.safe_load(out.read_text())["metadata"]["name"] == "my-run"
    assert "[render] RayJob reasondistill/my-run" in capsys.readouterr().err
    assert main(["render", DEMO, "tracking.tracking_uri=sqlite:///x.db", "--image", IMAGE]) == 2
    assert "tracking.tracking_uri" in capsys.readouterr().err
    assert main(["render", DEMO]) == 2
    assert "--image" in capsys.readouterr().err


def test_stdout_is_only_the_manifest() -> None:
    """`render ... | kubectl apply -f -`: library output while importing and planning must stay off stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "ray_jobs.k8s", "render", DEMO, "--image", IMAGE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    docs = list(yaml.safe_load_all(result.stdout))
    assert len(docs) == 1 and docs[0]["kind"] == "RayJob"


def test_kard_pipeline_sizes_from_its_t5_stages(crd_dir: Path) -> None:
    """KARD's reranker is an encoder the planner does not size; the T5 stages size the cluster."""
    rendered = render([str(REPO_ROOT / "ray_jobs" / "configs" / "kard_strategyqa.yaml")], image=IMAGE)
    checked(rendered.manifest, crd_dir)
    assert "kard-strategyqa-reranker" not in rendered.estimates and "kard-strategyqa-kard" in rendered.estimates
    assert "not a T5 the planner sizes" in rendered.summary()
