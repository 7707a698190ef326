"""Point a config's paths and URIs at the Kubernetes cluster, not at the machine that renders the manifest.

`ray_jobs.submit.localize` turns relative paths into this machine's absolute ones, which is right for a Ray
cluster that shares this machine's filesystem and wrong for pods. Here every path must be one the pods have
(under a volume the Ray containers mount) and every URI one they can reach; anything else fails with the field.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from trainer.config.fields import FieldRole, fields_with_role, with_fields
from trainer.config.loader import ConfigError
from trainer.config.schema import ExperimentConfig
from trainer.tracking.mlflow_tracker import resolve_experiment

LOOPBACK_HOSTS = {"localhost", "localhost.localdomain"}


@dataclass(frozen=True)
class ClusterTargets:
    """In-cluster defaults for what a config leaves unset; they match k8s/base (Services and volume mounts)."""

    tracking_uri: str = "http://mlflow:5000"
    storage_path: str = "/mnt/checkpoints/ray"  # the ray-checkpoints volume (RWX), on head and workers
    output_dir: str = "/tmp/reasondistill/runs"  # pod-local scratch (emptyDir): exports before MLflow upload
    data_dir: str = "/data/shared"  # the reasondistill-data volume, read-only
    retrieval_url: str = "http://retrieval-wikipedia:8000"
    elasticsearch_url: str = "https://kard-es-http:9200"
    mounts: tuple[str, ...] = ("/tmp", "/home/ray", "/mnt/checkpoints", "/data/shared")  # what pods can read
    shared_mounts: tuple[str, ...] = ("/mnt/checkpoints",)  # writable volumes every pod of the job shares


def _is_uri(value: str) -> bool:
    scheme = urlparse(value).scheme
    return len(scheme) > 1 and scheme != "file"  # "C:" is no scheme; file:// is a local path


def _check_reachable_uri(field: str, uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme in ("sqlite", "file") or not _is_uri(uri):
        raise ConfigError(
            f"{field}={uri}: a store on this machine; pods need a server they can reach "
            "(the in-cluster MLflow is http://mlflow:5000, the default)"
        )
    host = (parsed.hostname or "").lower()
    loopback = host in LOOPBACK_HOSTS
    with contextlib.suppress(ValueError):  # a name, not an address
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if loopback:
        raise ConfigError(f"{field}={uri}: in a pod, loopback is the pod itself; use the Service's name")
    if parsed.password:
        raise ConfigError(
            f"{field}: the URI carries a password, which would end up in the manifest; pods read credentials from "
            "Secrets (MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD from the mlflow-client Secret)"
        )


def _check_pod_path(field: str, value: str, mounts: tuple[str, ...]) -> str:
    path = PurePosixPath(value.removeprefix("file://"))
    if not path.is_absolute():
        raise ConfigError(f"{field}={value}: a relative path means this machine's directory; give a pod path")
    if not any(path == PurePosixPath(m) or PurePosixPath(m) in path.parents for m in mounts):
        raise ConfigError(
            f"{field}={value}: not on a volume the pods mount ({', '.join(mounts)}); "
            "copy it onto one, or use an s3:// / hub / runs:/ location"
        )
    return str(path)


def _check_model_source(field: str, value: str | None, mounts: tuple[str, ...]) -> None:
    """Hub names and MLflow URIs travel as they are; filesystem paths must be pod paths."""
    if value is None or _is_uri(value):
        return
    if value.startswith(("/", "./", "../", "~")):
        _check_pod_path(field, value, mounts)


def place_in_cluster(cfg: ExperimentConfig, targets: ClusterTargets) -> ExperimentConfig:
    """The config as the job's pods must see it; ConfigError names any field that only makes sense here."""
    mounts = targets.mounts
    tracking_uri = cfg.tracking.tracking_uri or targets.tracking_uri
    _check_reachable_uri("tracking.tracking_uri", tracking_uri)

    storage = cfg.run.storage_path or targets.storage_path
    if not _is_uri(storage):
        if not storage.startswith("/"):
            raise ConfigError(f"run.storage_path={storage}: a relative path means this machine's directory")
        # Every rank writes its shard and the driver on the head merges them: a volume they all share.
        storage = _check_pod_path("run.storage_path", storage, targets.shared_mounts)
    output_dir = cfg.run.output_dir
    if not output_dir.startswith("/"):
        output_dir = str(PurePosixPath(targets.output_dir).parent / output_dir)
    output_dir = _check_pod_path("run.output_dir", output_dir, mounts)

    paths = {"data.data_dir": _check_pod_path("data.data_dir", cfg.data.data_dir or targets.data_dir, mounts)}
    for field, value in fields_with_role(cfg, FieldRole.LOCAL_PATH):  # a method's own paths too
        if value and field not in paths:
            paths[field] = _check_pod_path(field, value, mounts)
    for field, value in fields_with_role(cfg, FieldRole.MODEL_SOURCE):
        _check_model_source(field, value, mounts)

    retrieval = cfg.retrieval
    retrieval_update: dict[str, str] = {}
    if retrieval.mode in ("http", "elasticsearch"):
        default = targets.retrieval_url if retrieval.mode == "http" else targets.elasticsearch_url
        url = retrieval.url or default
        for one in url.split(","):
            _check_reachable_uri("retrieval.url", one.strip())
        retrieval_update["url"] = url
    placed: ExperimentConfig = with_fields(
        cfg,
        {
            **paths,
            "run.output_dir": output_dir,
            "run.storage_path": storage,
            "tracking.tracking_uri": tracking_uri,
            "tracking.experiment": resolve_experiment(cfg.tracking),
            **{f"retrieval.{key}": value for key, value in retrieval_update.items()},
        },
    )
    return placed
