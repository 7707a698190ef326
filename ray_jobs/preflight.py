"""Checks run on the submitting machine before anything is submitted: seconds instead of a failed Ray job.

Each check names the config field it is about. What lives only on a remote cluster (a data path that does
not exist here) is reported as unchecked, not failed, unless the cluster runs on this machine.
"""

from __future__ import annotations

import difflib
import functools
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlparse

from retrieval_core.model_sources import is_mlflow_uri
from trainer.config.fields import FieldRole, fields_with_role
from trainer.config.loader import ConfigError
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.jsonl import iter_json_rows
from trainer.data.registry import load_splits, registered_datasets
from trainer.models.presets import PRESETS, hub_endpoint, hub_offline, hub_reachable, is_preset
from trainer.models.sources import packaged_model
from trainer.tracking.redaction import redact_text

PROBE_TIMEOUT_S = 5.0
FIRST_ROWS = 20


class PreflightError(ConfigError):
    """A config value that cannot work; the message starts with the field."""


def _http_get(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def check_tracking(cfg: ExperimentConfig) -> None:
    uri = cfg.tracking.tracking_uri or ""
    field = "tracking.tracking_uri"
    if uri.startswith(("http://", "https://")):
        try:
            status = _http_get(f"{uri.rstrip('/')}/health")
        except OSError as exc:
            raise PreflightError(f"{field}: MLflow tracking server {uri} unreachable: {exc}") from None
        if status >= 500:
            raise PreflightError(f"{field}: MLflow tracking server {uri} answers HTTP {status} on /health")
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PreflightError(f"{field}: {uri}: folder {folder} does not exist or is not writable")


def check_data(cfg: ExperimentConfig, local_cluster: bool) -> list[str]:
    """The dataset is registered and its files exist and parse; returns notes on what could not be checked."""
    data = cfg.data
    if data.dataset not in registered_datasets():
        raise PreflightError(
            f"data.dataset: unknown dataset {data.dataset!r}; known: {', '.join(registered_datasets())}"
        )
    if data.dataset == "jsonl":
        if not data.train_path:
            raise PreflightError("data.train_path: dataset 'jsonl' needs a training file")
        notes = []
        for field in ("train_path", "dev_path"):
            path = getattr(data, field)
            if path is None:
                continue
            if not Path(path).is_file() and not local_cluster:
                notes.append(f"data.{field}: {path} is not on this machine; not checked (the cluster must have it)")
                continue
            try:
                for line_no, row in iter_json_rows(path):
                    QAExample.from_row(row, where=f"{path}:{line_no}")
                    if line_no >= FIRST_ROWS:
                        break
            except DataError as exc:
                raise PreflightError(f"data.{field}: {exc}") from None
        return notes
    root = Path(data.data_dir) if data.data_dir else None
    if root is not None and not root.is_dir() and not local_cluster:
        return [f"data.data_dir: {root} is not on this machine; not checked (the cluster must have it)"]
    try:
        load_splits(data, cfg.run.seed)
    except DataError as exc:
        raise PreflightError(f"data: {exc}") from None
    return []


def hub_unreachable_reason() -> str | None:
    """Why no hub name can be downloaded from here (None: the hub answers a TCP connect within the probe timeout)."""
    if hub_offline():
        return "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
    if not hub_reachable(PROBE_TIMEOUT_S):
        return f"the model hub {hub_endpoint()} is unreachable (no connection within {PROBE_TIMEOUT_S:g} s)"
    return None


def _in_hf_cache(name: str) -> bool:
    """A hub repo whose config (a model's or a tokenizer's) is downloaded already loads without the hub."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "tokenizer_config.json"))
    except ValueError:  # not a repo id at all (huggingface_hub's HFValidationError)
        return False


def _nearest_presets(name: str) -> str:
    """For a mistyped name: the presets it is closest to (by its last path part, so `org/t5-smal` finds t5-small)."""
    close = difflib.get_close_matches(name.rsplit("/", 1)[-1], PRESETS, n=3, cutoff=0.6)
    return f"nearest presets: {', '.join(close)}" if close else f"presets: {', '.join(PRESETS)}"


def check_model_source(
    field: str,
    source: str | None,
    tracking_uri: str | None,
    unreachable_reason: Callable[[], str | None] = hub_unreachable_reason,
) -> list[str]:
    """A preset, an existing local path, an MLflow model URI whose run exists, or a hub name: one in the local HF
    cache passes, one the hub could serve is noted as unchecked, and with the hub unreachable it fails here rather
    than on every rank of the job ("couldn't connect to huggingface.co")."""
    if source is None or is_preset(source):
        return []
    if is_mlflow_uri(source):
        return _check_mlflow_model(field, source, tracking_uri)
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or path.exists():
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise PreflightError(f"{field}: {source} is not a model directory (no config.json)")
        return []
    if _in_hf_cache(source) or packaged_model(source):  # the weights are on this machine already
        return []
    reason = unreachable_reason()
    if reason is not None:
        raise PreflightError(
            f"{field}: {source!r} is no preset, local model directory, MLflow URI or model in the local HF cache, and "
            f"{reason}; {_nearest_presets(source)} (a cluster that reaches the hub itself: submit with --no-preflight)"
        )
    return [f"{field}: {source!r} is a model hub name; not checked from here"]


def _check_mlflow_model(field: str, uri: str, tracking_uri: str | None) -> list[str]:
    if not uri.startswith("runs:/"):
        return [f"{field}: {uri} not checked (only runs:/ URIs are)"]
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id, _, artifact_path = uri.removeprefix("runs:/").partition("/")
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
        listed = client.list_artifacts(run_id, artifact_path or None)
    except MlflowException as exc:
        raise PreflightError(f"{field}: {uri}: {exc.message}") from None
    if not listed:
        raise PreflightError(f"{field}: {uri}: run {run_id} has no artifacts under {artifact_path!r}")
    return []


def check_retrieval(cfg: ExperimentConfig, local_cluster: bool) -> list[str]:
    """The knowledge source the `retrieval` section names answers: the service's `/readyz`, Elasticsearch's
    root, or (embedded) the corpus file exists."""
    retrieval = cfg.retrieval
    if retrieval.mode == "embedded":
        if retrieval.corpus and not Path(retrieval.corpus).is_file():
            if not local_cluster:
                return [f"retrieval.corpus: {retrieval.corpus} is not on this machine; not checked"]
            raise PreflightError(f"retrieval.corpus: corpus file not found: {retrieval.corpus}")
        return []
    if not retrieval.url:
        return []  # the job falls back to its environment (e.g. ELASTICSEARCH_URL on the nodes)
    service = "retrieval service" if retrieval.mode == "http" else "Elasticsearch"
    for url in retrieval.url.split(","):
        url = url.strip().rstrip("/")
        probe = f"{url}/readyz" if retrieval.mode == "http" else url
        try:
            status = _http_get(probe)
        except OSError as exc:
            raise PreflightError(f"retrieval.url: {service} {redact_text(url)} unreachable: {exc}") from None
        if status >= 500 or (retrieval.mode == "http" and status not in (200, 401)):  # 401: up, wants a token
            raise PreflightError(f"retrieval.url: {service} {redact_text(url)} not ready (HTTP {status} on {probe})")
    return []


def check_storage(cfg: ExperimentConfig) -> None:
    storage = cfg.run.storage_path
    if storage and "://" not in storage:
        folder = Path(storage)
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            raise PreflightError(f"run.storage_path: {storage} is not writable (at {folder})")
    elif storage and urlparse(storage).scheme not in {"s3", "gs", "gcs", "abfs", "hdfs", "file", "memory"}:
        raise PreflightError(f"run.storage_path: {storage}: unsupported scheme for Ray Train storage")


def preflight(
    configs: Iterable[tuple[str, ExperimentConfig]],
    local_cluster: bool,
    report: Callable[[str], None] = print,
) -> None:
    """Run every check on every (stage name, config); raises PreflightError at the first problem."""
    seen: set[str] = set()
    notes: list[str] = []
    unreachable_reason = functools.cache(hub_unreachable_reason)  # one probe for every field and stage
    for stage, cfg in configs:
        prefix = f"stage {stage!r}: " if stage else ""
        try:
            checks: list[tuple[object, Callable[[], list[str] | None]]] = [  # a check returns its notes, if any
                (cfg.tracking, functools.partial(check_tracking, cfg)),
                ((cfg.data, cfg.run.seed), functools.partial(check_data, cfg, local_cluster)),
                (cfg.run.storage_path, functools.partial(check_storage, cfg)),
                (cfg.retrieval, functools.partial(check_retrieval, cfg, local_cluster)),
            ]
            for subject, check in checks:  # pipeline stages share most settings: check each value once
                fingerprint = repr(subject)
                if fingerprint not in seen:
                    seen.add(fingerprint)
                    notes.extend(check() or [])
            uri = cfg.tracking.tracking_uri
            for field, source in fields_with_role(cfg, FieldRole.MODEL_SOURCE):  # a method's own ones too
                notes.extend(check_model_source(field, source, uri, unreachable_reason))
        except PreflightError as exc:
            raise PreflightError(prefix + str(exc)) from None
    for note in dict.fromkeys(notes):
        report(f"[preflight] note: {note}")
