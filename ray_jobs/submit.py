"""Submit a training run or a pipeline to a Ray cluster as a Ray job, stream its logs, exit non-zero if it fails.

    python -m ray_jobs.submit CONFIG.yaml [section.key=value ...] [--address http://HEAD:8265]

A file with a top-level `pipeline:` key runs as a pipeline (ray_jobs.pipeline); overrides then apply to its base.

The address comes from --address or RAY_ADDRESS; with neither, a local head is started for the
duration of the run and stopped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.job_submission import JobStatus, JobSubmissionClient

from ray_jobs.failure_report import format_failure, parse_failure
from ray_jobs.job_payload import PAYLOAD_ENV, RESULT_MARKER, encode_payload
from ray_jobs.local_cluster import LOCAL_RAY_ENV, LocalRayHead
from ray_jobs.pipeline import PipelinePlan, is_pipeline_file, load_pipeline
from ray_jobs.preflight import preflight
from trainer.config.fields import FieldRole, fields_with_role, with_fields
from trainer.config.loader import ConfigError, load_config, split_config_args
from trainer.config.schema import ExperimentConfig
from trainer.data.registry import data_root
from trainer.failpoints import FAILPOINTS_ENV
from trainer.methods.registry import METHOD_MODULES_ENV
from trainer.planning.from_config import resolve_auto_zero
from trainer.tracking import timeline
from trainer.tracking.mlflow_tracker import resolve_experiment, resolve_tracking_uri, training_view_url

REPO_ROOT = Path(__file__).resolve().parents[1]
# What the job's working_dir upload leaves out: no job imports the tests (whose sources hold the reliability
# suite's canary secrets, which would otherwise sit unpacked in every node's Ray temp dir), run outputs, caches.
UPLOAD_EXCLUDES = [
    "tests",
    ".venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "bench_results",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
]


def is_uri(value: str) -> bool:
    """runs:/..., models:/..., s3://..., http://...: anything with a scheme is not a path on this machine."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value) is not None


def localize(cfg: ExperimentConfig) -> ExperimentConfig:
    """Relative paths mean the submitter's cwd, not the job's (a temp copy of the working dir).

    Every field a section declares as a path (trainer.config.fields) becomes absolute, and so does every model
    source that names an existing directory here (a teacher's export, a verifier); hub names and URIs stay."""
    output_dir = Path(cfg.run.output_dir).expanduser().resolve()
    storage = cfg.run.storage_path
    if storage is None or "://" not in storage:
        storage = str(Path(storage).expanduser().resolve()) if storage else str(output_dir / "ray")
    updates: dict[str, Any] = {
        "run.output_dir": str(output_dir),
        "run.storage_path": storage,
        "tracking.tracking_uri": resolve_tracking_uri(cfg.tracking),
        "tracking.experiment": resolve_experiment(cfg.tracking),
        "data.data_dir": str(data_root(cfg.data).resolve()),
    }
    for field, value in fields_with_role(cfg, FieldRole.LOCAL_PATH):
        if value and not is_uri(value) and field not in updates:
            updates[field] = str(Path(value).expanduser().resolve())
    for field, value in fields_with_role(cfg, FieldRole.MODEL_SOURCE):
        if value and not is_uri(value) and Path(value).expanduser().exists():
            updates[field] = str(Path(value).expanduser().resolve())
    if cfg.retrieval.mode == "embedded" and cfg.retrieval.index:  # elsewhere `index` is an alias, not a path
        updates["retrieval.index"] = str(Path(cfg.retrieval.index).expanduser().resolve())
    localized: ExperimentConfig = with_fields(cfg, updates)
    return localized


def job_env(local: bool, request: JobRequest) -> dict[str, str]:
    """The job's environment: its payload, thread count, and the run's MLflow store for every process.

    Secrets (MLflow credentials, HF token, ...) are never put here: a Ray job's runtime_env is readable by
    anyone who can list jobs. The cluster's nodes hold them (a local head started by `submit` inherits them).
    """
    env = {
        PAYLOAD_ENV: request.payload,
        "MLFLOW_TRACKING_URI": resolve_tracking_uri(request.sizing.tracking),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # 3x faster CPU steps than the default
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    # Fault-injection tests arm failpoints in the job's processes; the benchmark asks for phase markers; methods
    # registered outside trainer.methods are imported by every process of the job.
    for key in (FAILPOINTS_ENV, timeline.TIMELINE_ENV, METHOD_MODULES_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    if local:
        env.update(LOCAL_RAY_ENV)
    return env


@contextlib.contextmanager
def cluster_address(address: str | None, cfg: ExperimentConfig) -> Iterator[tuple[str, bool]]:
    """(address, started_here): the given cluster, or a local head that lives for the block."""
    if address:
        yield address, False
        return
    cpus = max(os.cpu_count() or 1, int(cfg.run.num_workers * cfg.run.cpus_per_worker + 0.999))
    log_file = Path(cfg.run.output_dir) / "ray-head.log"
    print(f"[submit] starting a local Ray head ({cpus} CPUs); log: {log_file}", flush=True)
    started = False
    try:
        with LocalRayHead(num_cpus=cpus, log_file=log_file) as head:
            started = True
            yield head.address, True
    finally:  # also when the block ends on an error, Ctrl-C or SIGTERM
        if started:
            print("[submit] local Ray head stopped", flush=True)


async def _stream_logs(client: JobSubmissionClient, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def parse_result(logs: str) -> dict[str, Any] | None:
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line.removeprefix(RESULT_MARKER))
    return None


def is_loopback(address: str) -> bool:
    return urlparse(address if "://" in address else f"http://{address}").hostname in {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class JobRequest:
    """What to run: an entrypoint module, its base64 payload, and the config that sizes the cluster."""

    entrypoint_module: str
    payload: str
    sizing: ExperimentConfig
    metadata: dict[str, str]
    configs: tuple[tuple[str, ExperimentConfig], ...] = ()  # (stage name, config) for preflight checks

    @classmethod
    def for_training(cls, cfg: ExperimentConfig) -> JobRequest:
        return cls(
            "ray_jobs.train_job",
            encode_payload(cfg),
            cfg,
            {"method": cfg.method.name, "dataset": cfg.data.dataset, "run": cfg.run.name},
            (("", cfg),),
        )

    @classmethod
    def for_pipeline(cls, plan: PipelinePlan) -> JobRequest:
        widest = max((stage.config for stage in plan.stages), key=lambda c: c.run.num_workers * c.run.cpus_per_worker)
        return cls(
            "ray_jobs.pipeline_job",
            encode_payload(plan),
            widest,
            {"pipeline": plan.name, "stages": ",".join(s.name for s in plan.stages)},
            tuple((s.name, s.config) for s in plan.stages),
        )


def submit_when_agent_ready(client: JobSubmissionClient, wait_s: float = 600.0, **job: Any) -> str:
    """Submit, retrying while the head answers "No available agent" (its job agent starts after the dashboard
    does, later still on a busy machine); any other error is raised at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


@dataclass(frozen=True)
class JobOutcome:
    status: JobStatus
    result: dict[str, Any] | None  # the job's result summary (on success)
    failure: dict[str, Any] | None  # its root cause (on failure), see ray_jobs.failure_report


def submit(
    request: JobRequest,
    address: str | None,
    timeout_s: float | None = None,
    python: str | None = None,
) -> JobOutcome:
    """Submit, stream, wait; returns the final status, the job's result summary or its root cause.

    A cluster on this machine runs the job with this interpreter; a remote one with `python` from its image.
    """
    with cluster_address(address, request.sizing) as (resolved, started_here):
        local = started_here or is_loopback(resolved)
        tracking_uri = resolve_tracking_uri(request.sizing.tracking)
        if not local and tracking_uri.startswith("sqlite:"):
            print(
                f"[submit] warning: MLflow store {tracking_uri} is a file path on the cluster's nodes; set "
                "MLFLOW_TRACKING_URI to a tracking server to see the runs from here",
                file=sys.stderr,
                flush=True,
            )
        client = JobSubmissionClient(resolved)
        python = python or (sys.executable if local else "python")
        job_id = submit_when_agent_ready(
            client,
            entrypoint=f"{python} -m {request.entrypoint_module}",
            runtime_env={
                "working_dir": str(REPO_ROOT),
                "excludes": UPLOAD_EXCLUDES,
                "env_vars": job_env(local, request),
            },
            metadata=request.metadata,
        )
        timeline.mark("submit.submitted", job_id=job_id)
        print(f"[submit] job {job_id} submitted to {resolved}", flush=True)
        started = time.monotonic()
        try:
            asyncio.run(asyncio.wait_for(_stream_logs(client, job_id), timeout=timeout_s))
        except TimeoutError:
            client.stop_job(job_id)
            print(f"[submit] job {job_id} stopped after {timeout_s:.0f}s", flush=True)
        status = client.get_job_status(job_id)
        while not status.is_terminal():
            time.sleep(1.0)
            status = client.get_job_status(job_id)
        timeline.mark("submit.job_ended", status=status.value)
        logs = client.get_job_logs(job_id)
        print(f"[submit] job {job_id} {status.value} after {time.monotonic() - started:.0f}s", flush=True)
        failure = parse_failure(logs)
        if failure is None and status != JobStatus.SUCCEEDED:
            message = client.get_job_info(job_id).message or "no message from Ray"
            failure = {"stage": "job", "errors": [{"rank": None, "type": "JobFailed", "message": message}]}
        return JobOutcome(status, parse_result(logs), failure)


HEADLINE_METRICS = (
    "dev/accuracy", "dev/vote_accuracy", "dev/reranker_recall_at_1", "dev/bm25_recall_at_1", "knowledge/train_rows",
    "train/steps", "train/wall_time_s",
)  # fmt: skip


def stage_headline(metrics: dict[str, Any]) -> str:
    """The metrics a stage has, of those worth a line: accuracy for students, recall for rerankers, rows for data."""
    parts = []
    for key in HEADLINE_METRICS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            unit = "s" if key.endswith("_s") else ""
            parts.append(
                f"{key} {value:.0f}{unit}" if key.startswith(("train/", "knowledge/")) else f"{key} {value:.4f}"
            )
    return "  ".join(parts)


def print_summary(result: dict[str, Any], cfg: ExperimentConfig) -> None:
    print("\n==== ReasonDistill result ====")
    stages = result.get("stages", {"run": result})
    for stage, metrics in stages.items():
        print(f"  [{stage}] {stage_headline(metrics)}")
        produced = (
            f"model {metrics['model_uri']}" if metrics.get("model_uri") else f"data {metrics.get('knowledge_path')}"
        )
        print(f"      mlflow run {metrics.get('mlflow_run_id')}  {produced}")
    tracking_uri = cfg.tracking.tracking_uri or ""
    if tracking_uri.startswith("sqlite:"):
        print(
            f"  open the UI: .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port 5000"
            f"  (then {training_view_url('http://127.0.0.1:5000', tracking_uri, resolve_experiment(cfg.tracking))})"
        )
    else:
        print(f"  MLflow: {tracking_uri}")


def build_request(
    args: Sequence[str], place: Callable[[ExperimentConfig], ExperimentConfig] = localize
) -> JobRequest:
    """A training config, or a pipeline file (top-level `pipeline:`); overrides apply to the run / the base.

    `place` points the config's paths and URIs at where the job runs (this machine's by default); then
    `ds.zero_stage=auto` is resolved by the memory planner, so the job receives the planned stage.
    """
    path, overrides = split_config_args(args)

    def prepare(cfg: ExperimentConfig) -> ExperimentConfig:
        return resolve_auto_zero(place(cfg))

    if path is not None and is_pipeline_file(path):
        return JobRequest.for_pipeline(load_pipeline(path, overrides).with_configs(prepare))
    return JobRequest.for_training(prepare(load_config(path, overrides)))


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (a CI timeout, `kill`, a pod stopping) unwinds like Ctrl-C: a local head this submitter started is
    stopped with its whole process tree, instead of outliving it in its own process group."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="[CONFIG.yaml] then dotted overrides, e.g. ds.zero_stage=3")
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray dashboard address (default: $RAY_ADDRESS; none: start a local head)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    parser.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the checks run here before submitting (data files, model URIs, MLflow and services reachable)",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="interpreter on the cluster (default: this one for a local cluster, else `python`)",
    )
    args = parser.parse_args(argv)
    timeline.mark("submit.process", at=timeline.process_start_time())
    try:
        request = build_request(args.args)
        if not args.no_preflight:
            started = time.monotonic()
            preflight(request.configs, local_cluster=not args.address or is_loopback(args.address))
            print(f"[preflight] ok in {time.monotonic() - started:.1f}s", flush=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outcome = submit(request, args.address, timeout_s=args.timeout, python=args.python)
    if outcome.status != JobStatus.SUCCEEDED:
        print(f"error: Ray job ended {outcome.status.value}", file=sys.stderr)
        if outcome.failure:
            print(f"error: {format_failure(outcome.failure)}", file=sys.stderr)
        return 1
    if outcome.result is not None:
        print_summary(outcome.result, request.sizing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
