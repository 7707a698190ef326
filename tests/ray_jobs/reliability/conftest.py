"""One real multi-node Ray cluster (network namespaces, S3 store, MLflow server) shared by the fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cluster import FaultCluster
from support.failpoints import Failpoints

REPO_ROOT = Path(__file__).resolve().parents[3]
# Canary secrets: every process of the cluster and the submitter holds them; nothing the runs write may.
CANARIES = {
    "MLFLOW_TRACKING_USERNAME": "canary-mlflow-user-5c1e",
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-9d2b",
    "MLFLOW_TRACKING_TOKEN": "canary-mlflow-token-41f7",
    "HF_TOKEN": "canary-hf-token-b83a",
    "RETRIEVAL_API_TOKEN": "canary-retrieval-bearer-06cd",
    "ELASTICSEARCH_API_KEY": "canary-es-api-key-7ae0",
}


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """A line in pytest's own output, shown even when output is captured (cluster layout, recovery times)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(text: str) -> None:
        with capture.global_and_fixture_disabled():
            print(text, flush=True)

    return say


@pytest.fixture(scope="module")  # the fault tests share it; it is gone before the rest of the suite runs
def fault_cluster(tmp_path_factory: pytest.TempPathFactory, say: Callable[[str], None]) -> Iterator[FaultCluster]:
    started = time.monotonic()
    cluster = FaultCluster(
        tmp_path_factory.mktemp("fault-cluster"),
        force_loopback=bool(os.environ.get("REASONDISTILL_TEST_LOOPBACK_CLUSTER")),
        extra_env=CANARIES,
    )
    cluster.start()
    say(f"\n[fault cluster] {cluster.describe()} (up in {time.monotonic() - started:.0f}s)")
    yield cluster
    cluster.stop()


@dataclass
class Submission:
    process: subprocess.Popen[str]
    log_file: Path

    def wait(self, timeout_s: float = 900) -> tuple[int, str]:
        self.process.wait(timeout=timeout_s)
        return self.process.returncode, self.log_file.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None


def submit_async(
    cluster: FaultCluster, args: list[str], workdir: Path, failpoints: Failpoints | None = None
) -> Submission:
    """`python -m ray_jobs.submit` against the cluster, as a user would run it, in the background."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / f"submit-{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        **CANARIES,
        "MLFLOW_TRACKING_URI": cluster.tracking_uri,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),  # this checkout's code, whatever the venv's editable install points at
        **(failpoints.env() if failpoints else {}),
    }
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray_jobs.submit",
                *args,
                "--address",
                cluster.dashboard_url,
                "--python",
                sys.executable,
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Submission(process, log_file)
