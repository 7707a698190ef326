"""A KubeRay RayJob for a training config or a pipeline: the same payload `ray_jobs.submit` sends, a Ray
cluster copied from k8s/base/ray/raycluster.yaml (or an overlay), and worker pods sized from the memory plan."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from ray_jobs.job_payload import decode_payload
from ray_jobs.k8s.placement import ClusterTargets, place_in_cluster
from ray_jobs.pipeline import PipelinePlan
from ray_jobs.submit import JobRequest, build_request, job_env
from trainer.config.loader import ConfigError
from trainer.config.schema import ExperimentConfig
from trainer.planning.from_config import ModelNotPlannable, estimate_for_config, hardware
from trainer.planning.memory import GIB
from trainer.planning.planner import Estimate

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
RAYCLUSTER_FILE = K8S_DIR / "base" / "ray" / "raycluster.yaml"
RAYJOB_SKELETON = K8S_DIR / "rayjob" / "rayjob.yaml"
JOB_IMAGE = "reasondistill-job"  # the job image's name in the manifests before kustomize's `images:`
SECRET_MOUNT_PREFIX = "/var/run/secrets"

# Ray's object store lives in /dev/shm with NCCL's shared-memory buffers (~1 GiB per GPU is ample for them).
GPU_OBJECT_STORE_BYTES = 4 * GIB
NCCL_SHM_BYTES_PER_GPU = GIB
CPU_OBJECT_STORE_BYTES = 512 * 2**20
CPU_SHM_EXTRA_BYTES = 256 * 2**20
RAY_PROCESSES_BYTES = GIB  # raylet, dashboard agent, log monitor in every worker pod
CPU_HEADROOM = 1.25  # a CPU worker's limit over its planned peak (allocator, data, tokenizer)


class RenderError(ValueError):
    """A manifest that cannot be rendered: bad cluster spec, sizes that fit no node."""


@dataclass(frozen=True)
class WorkerSize:
    """One worker group of the job's own Ray cluster."""

    group: str  # "gpu" or "cpu", the group kept from the cluster spec
    replicas: int
    ranks_per_pod: int
    ray_cpus: int
    pod_cpus: int
    memory_bytes: int
    gpus: int
    shm_bytes: int
    object_store_bytes: int

    def describe(self) -> str:
        gpus = f", {self.gpus} GPU" if self.gpus else ""
        return (
            f"{self.replicas} {self.group} worker pod(s) x ({self.pod_cpus} CPU{gpus}, "
            f"{_gibibytes(self.memory_bytes)} memory, /dev/shm {_gibibytes(self.shm_bytes)})"
        )


def _gibibytes(value: int) -> str:
    return f"{math.ceil(value / GIB)}Gi"


def size_for(cfg: ExperimentConfig, estimate: Estimate) -> WorkerSize:
    hw = hardware(cfg)
    ranks = hw.gpus_per_node
    ray_cpus = max(1, math.ceil(ranks * cfg.run.cpus_per_worker))
    if cfg.run.use_gpu:
        object_store = GPU_OBJECT_STORE_BYTES
        shm = object_store + NCCL_SHM_BYTES_PER_GPU * ranks
        memory = estimate.host_bytes_per_node + shm
        return WorkerSize("gpu", hw.num_nodes, ranks, ray_cpus, ray_cpus + 1, memory, ranks, shm, object_store)
    object_store = CPU_OBJECT_STORE_BYTES
    shm = object_store + CPU_SHM_EXTRA_BYTES
    memory = int(estimate.device_bytes * CPU_HEADROOM) + RAY_PROCESSES_BYTES + shm
    return WorkerSize("cpu", hw.num_nodes, 1, ray_cpus, ray_cpus + 1, memory, 0, shm, object_store)


def size_workers(configs: Sequence[ExperimentConfig]) -> tuple[WorkerSize, dict[str, Estimate]]:
    """The worker group that fits every stage the planner can size (T5s): the most pods, CPUs and memory any
    needs. Other stages (KARD's encoder reranker) are small next to the T5 students and ride along."""
    if len({cfg.run.use_gpu for cfg in configs}) > 1:
        raise ConfigError("run.use_gpu differs between the pipeline's stages; one RayJob has one worker shape")
    estimates: dict[str, Estimate] = {}
    skipped = []
    for cfg in configs:
        try:
            estimates[cfg.run.name] = estimate_for_config(cfg)
        except ModelNotPlannable as exc:
            skipped.append(f"{cfg.run.name} ({exc})")
    if not estimates:
        raise ConfigError("no stage's model can be sized offline: " + "; ".join(skipped))
    planned = [cfg for cfg in configs if cfg.run.name in estimates]
    sizes = [size_for(cfg, estimates[cfg.run.name]) for cfg in planned]
    for cfg, size in zip(planned, sizes, strict=True):
        limit = cfg.cluster.node_memory_gib * GIB
        if size.memory_bytes > limit:
            raise ConfigError(
                f"run {cfg.run.name}: a worker pod needs {_gibibytes(size.memory_bytes)} of memory, more than "
                f"cluster.node_memory_gib={cfg.cluster.node_memory_gib:g}; lower optim.micro_batch_size, use "
                "ds.zero_stage=3, or add workers"
            )
    widest = sizes[0]
    for size in sizes[1:]:
        widest = WorkerSize(
            widest.group,
            max(widest.replicas, size.replicas),
            max(widest.ranks_per_pod, size.ranks_per_pod),
            max(widest.ray_cpus, size.ray_cpus),
            max(widest.pod_cpus, size.pod_cpus),
            max(widest.memory_bytes, size.memory_bytes),
            max(widest.gpus, size.gpus),
            max(widest.shm_bytes, size.shm_bytes),
            max(widest.object_store_bytes, size.object_store_bytes),
        )
    return widest, estimates


def load_cluster_spec(kustomize_dir: Path | None = None) -> dict[str, Any]:
    """The RayCluster's spec from the base file, or from `kubectl kustomize DIR` (an overlay's patched one)."""
    if kustomize_dir is None:
        docs = [yaml.safe_load(RAYCLUSTER_FILE.read_text())]
    else:
        try:
            built = subprocess.run(
                ["kubectl", "kustomize", str(kustomize_dir)], check=True, capture_output=True, text=True, timeout=120
            ).stdout
        except FileNotFoundError:
            raise RenderError("--from-kustomize needs kubectl on PATH") from None
        except subprocess.CalledProcessError as exc:
            raise RenderError(f"kubectl kustomize {kustomize_dir} failed: {exc.stderr.strip()}") from None
        docs = [d for d in yaml.safe_load_all(built) if d]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    if len(clusters) != 1:
        raise RenderError(
            f"expected exactly one RayCluster in {kustomize_dir or RAYCLUSTER_FILE}, found {len(clusters)}"
        )
    return json.loads(json.dumps(clusters[0]["spec"]))  # plain data: YAML anchors shared nodes between groups


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template.get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def cluster_targets(spec: dict[str, Any], base: ClusterTargets) -> ClusterTargets:
    """Pod paths the workers mount (any path a config may name) and the shared writable volumes among them."""
    group = spec["workerGroupSpecs"][0]["template"]
    volumes = {v["name"]: v for v in group["spec"].get("volumes", [])}
    mounts, shared = [], []
    for mount in group["spec"]["containers"][0].get("volumeMounts", []):
        path = mount["mountPath"]
        if path == "/dev/shm" or path.startswith(SECRET_MOUNT_PREFIX):
            continue
        mounts.append(path)
        claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim")
        if claim and not mount.get("readOnly") and not claim.get("readOnly"):
            shared.append(path)
    return ClusterTargets(
        tracking_uri=base.tracking_uri,
        storage_path=base.storage_path,
        output_dir=base.output_dir,
        data_dir=base.data_dir,
        retrieval_url=base.retrieval_url,
        elasticsearch_url=base.elasticsearch_url,
        mounts=tuple(mounts),
        shared_mounts=tuple(shared),
    )


def _set_image(template: dict[str, Any], image: str, known: set[str | None]) -> None:
    for container in _containers(template):
        if container.get("image") in known:
            container["image"] = image


def _size_group(group: dict[str, Any], size: WorkerSize) -> None:
    group["replicas"] = group["minReplicas"] = group["maxReplicas"] = size.replicas
    params = group.setdefault("rayStartParams", {})
    params["num-cpus"] = str(size.ray_cpus)
    params["object-store-memory"] = str(size.object_store_bytes)
    if size.gpus:
        params["num-gpus"] = str(size.gpus)
    container = group["template"]["spec"]["containers"][0]
    amounts = {"cpu": str(size.pod_cpus), "memory": _gibibytes(size.memory_bytes)}
    if size.gpus:
        amounts["nvidia.com/gpu"] = str(size.gpus)
    container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}  # Guaranteed QoS
    for volume in group["template"]["spec"].get("volumes", []):
        if volume["name"] == "dshm":
            volume["emptyDir"] = {"medium": "Memory", "sizeLimit": _gibibytes(size.shm_bytes)}


def job_name(request: JobRequest, explicit: str | None) -> str:
    """DNS-1123, short enough for KubeRay's derived names; the payload hash tells configs of one run apart."""
    if explicit:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?", explicit):
            raise RenderError(f"--name {explicit!r}: lowercase letters, digits and '-', at most 47 characters")
        return explicit
    base = request.metadata.get("pipeline") or request.metadata.get("run") or "job"
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:38].strip("-") or "job"
    return f"{slug}-{hashlib.sha256(request.payload.encode()).hexdigest()[:6]}"


def _configs(request: JobRequest) -> list[ExperimentConfig]:
    if request.entrypoint_module == "ray_jobs.pipeline_job":
        return [stage.config for stage in decode_payload(PipelinePlan, request.payload).stages]
    return [request.sizing]


def _literal_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _ManifestDumper(yaml.SafeDumper):
    pass


_ManifestDumper.add_representer(str, _literal_strings)


def to_yaml(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False, width=120, default_flow_style=False)


@dataclass(frozen=True)
class Rendered:
    manifest: dict[str, Any]
    request: JobRequest
    size: WorkerSize | None
    estimates: dict[str, Estimate]  # by run name; stages the planner cannot size are absent

    def summary(self) -> str:
        meta = self.manifest["metadata"]
        lines = [f"[render] RayJob {meta['namespace']}/{meta['name']}: {self.manifest['spec']['entrypoint']}"]
        for cfg in _configs(self.request):
            est = self.estimates.get(cfg.run.name)
            if est is None:
                lines.append(f"[render]   {cfg.run.name}: {cfg.model.name} is not a T5 the planner sizes; not sized")
                continue
            lines.append(
                f"[render]   {cfg.run.name}: {est.setup.describe()}, {cfg.run.num_workers} worker(s), "
                f"{est.device_bytes / GIB:.1f} GiB per {'GPU' if cfg.run.use_gpu else 'worker'}"
            )
        if self.size is not None:
            lines.append(f"[render]   cluster: {self.size.describe()}")
        return "\n".join(lines)


def render(
    args: Sequence[str],
    image: str,
    namespace: str = "reasondistill",
    name: str | None = None,
    targets: ClusterTargets | None = None,
    kustomize_dir: Path | None = None,
    existing_cluster: str | None = None,
    timeout_s: int | None = None,
) -> Rendered:
    """The RayJob for `CONFIG [overrides]`: config placed in the cluster, `auto` resolved, pods sized."""
    spec = load_cluster_spec(kustomize_dir)
    targets = cluster_targets(spec, targets or ClusterTargets())
    request = build_request(args, place=partial(place_in_cluster, targets=targets))
    configs = _configs(request)
    size, estimates = size_workers(configs)

    job = yaml.safe_load(RAYJOB_SKELETON.read_text())
    job["metadata"]["name"] = job_name(request, name)
    job["metadata"]["namespace"] = namespace
    job["metadata"].setdefault("labels", {})["reasondistill.io/run"] = job["metadata"]["name"]
    job["metadata"]["annotations"] = {
        "reasondistill.io/plan": "; ".join(f"{run}: {est.setup.describe()}" for run, est in estimates.items())
    }
    job_spec = job["spec"]
    job_spec["entrypoint"] = f"python -m {request.entrypoint_module}"
    env = job_env(local=False, request=request)
    job_spec["runtimeEnvYAML"] = yaml.safe_dump({"env_vars": env}, sort_keys=True, width=10**9)
    if timeout_s:
        job_spec["activeDeadlineSeconds"] = int(timeout_s)
    known_images: set[str | None] = {JOB_IMAGE}  # None: a container that names no image
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        known_images.update(c.get("image") for c in _containers(group["template"]))
    _set_image(job_spec["submitterPodTemplate"], image, known_images)

    if existing_cluster:
        # Submit to a running cluster (e.g. the base's autoscaling `reasondistill`); it scales itself.
        job_spec["clusterSelector"] = {"ray.io/cluster": existing_cluster}
        job_spec["shutdownAfterJobFinishes"] = False
        job_spec.pop("ttlSecondsAfterFinished", None)
        return Rendered(job, request, None, estimates)

    # A cluster of fixed size for this job alone: no autoscaler, one worker group of the planned shape.
    spec.pop("enableInTreeAutoscaling", None)
    spec.pop("autoscalerOptions", None)
    groups = [g for g in spec["workerGroupSpecs"] if g.get("groupName") == size.group]
    if not groups:
        raise RenderError(f"the Ray cluster spec has no worker group named {size.group!r}")
    spec["workerGroupSpecs"] = groups[:1]
    _size_group(groups[0], size)
    # Without the autoscaler the head needs no Kubernetes API access either.
    head = spec["headGroupSpec"]["template"]["spec"]
    head.setdefault("serviceAccountName", "ray")
    head.setdefault("automountServiceAccountToken", False)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        _set_image(group["template"], image, known_images)
        labels = group["template"].setdefault("metadata", {}).setdefault("labels", {})
        labels["app.kubernetes.io/part-of"] = "reasondistill"
        labels["reasondistill.io/run"] = job["metadata"]["name"]
    job_spec["rayClusterSpec"] = spec
    return Rendered(job, request, size, estimates)
