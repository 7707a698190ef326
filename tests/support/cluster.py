"""A real multi-node Ray cluster on one machine, for fault-injection tests.

Each Ray node runs in its own network namespace with its own address (`NamespaceNetwork`); the S3 store,
PostgreSQL and the MLflow server listen on the bridge's address in the root namespace. Where namespaces
cannot be made (no root, no iproute2), the nodes run side by side on loopback instead (`mode == "loopback"`,
`fallback_reason` says why). Checkpoints go to the S3 store, never to a path the nodes share.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ray_jobs.local_cluster import LOCAL_RAY_ENV
from support.netns import NamespaceNetwork, namespaces_unavailable_reason
from support.processes import ManagedProcess, free_port, http_ok
from support.services import (
    TEST_AWS_ENV,
    MLflowServer,
    PostgresServer,
    S3Store,
    postgres_unavailable_reason,
)

HEAD = "head"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
# Faster node-death detection than production defaults (3 s x 5), so a lost node costs seconds in tests.
FAST_FAILURE_DETECTION_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "1000",
}


@dataclass
class RayNode:
    name: str
    address: str
    process: ManagedProcess


class FaultCluster:
    """A head plus `workers` Ray nodes with `cpus_per_node` CPUs each, an S3 store and an MLflow server."""

    def __init__(
        self,
        workdir: Path,
        workers: int = 1,
        cpus_per_node: int = 1,
        force_loopback: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.cpus_per_node = cpus_per_node
        self.node_names = [HEAD, *(f"node{i + 1}" for i in range(workers))]
        reason = "forced by the caller" if force_loopback else namespaces_unavailable_reason()
        self.mode = "loopback" if reason else "netns"
        self.fallback_reason = reason
        self.network = None if reason else NamespaceNetwork(self.node_names)
        self.service_host = self.network.gateway if self.network else "127.0.0.1"
        self.nodes: dict[str, RayNode] = {}
        self.s3: S3Store | None = None
        self.postgres: PostgresServer | None = None
        self.mlflow: MLflowServer | None = None
        self.backend_store = ""
        self._gcs_port = GCS_PORT if self.network else free_port()
        self._dashboard_port = DASHBOARD_PORT if self.network else free_port()
        self.temp_dir = Path(f"/tmp/rdt{os.getpid() % 100000:x}")  # short: Ray's socket paths must fit 107 bytes

    # ---- addresses --------------------------------------------------------------------------------
    def address(self, node: str) -> str:
        return self.network.address(node) if self.network else "127.0.0.1"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.address(HEAD)}:{self._dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        assert self.mlflow is not None
        return self.mlflow.uri

    def storage_uri(self, prefix: str) -> str:
        assert self.s3 is not None
        return self.s3.uri("checkpoints", prefix)

    def registered_checkpoint(self, run_name: str, prefix: str | None = None) -> dict[str, Any] | None:
        """Ray Train's latest registered checkpoint of `run_name` stored under `storage_uri(prefix or run_name)`
        (its snapshot in S3): dir name and metrics."""
        assert self.s3 is not None
        prefix = prefix or run_name
        key = f"{prefix}/{run_name}/checkpoint_manager_snapshot.json"
        if key not in self.s3.list_keys("checkpoints", f"{prefix}/"):
            return None
        return json.loads(self.s3.read("checkpoints", key)).get("latest_checkpoint_result")

    def wait_registered_step(
        self, run_name: str, step: int, timeout_s: float = 300.0, prefix: str | None = None, stage: str | None = None
    ) -> None:
        """Until the run's latest registered checkpoint is of `step` (and, in a pipeline's shared worker group, of
        `stage`: ray_jobs.stage_group labels each checkpoint's metrics with its stage)."""
        from ray_jobs.stage_group import STAGE_METRIC

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            latest = self.registered_checkpoint(run_name, prefix)
            metrics = latest["metrics"] if latest is not None else {}
            if metrics.get("train/step", metrics.get("train/steps")) == step and metrics.get(STAGE_METRIC) == stage:
                return
            time.sleep(0.3)
        raise TimeoutError(f"Ray Train did not register the step-{step} checkpoint of {run_name} in {timeout_s:.0f}s")

    def checkpoint_weights(self, run_name: str) -> dict[str, Any]:
        """The model weights of the run's latest registered checkpoint, read back from S3."""
        import io

        import torch

        latest = self.registered_checkpoint(run_name)
        assert latest is not None and self.s3 is not None, f"no registered checkpoint for {run_name}"
        key = f"{run_name}/{run_name}/{latest['checkpoint_dir_name']}/checkpoint/mp_rank_00_model_states.pt"
        return torch.load(io.BytesIO(self.s3.read("checkpoints", key)), weights_only=False)["module"]

    def describe(self) -> str:
        where = f"network namespaces on {self.network.subnet}" if self.network else f"loopback ({self.fallback_reason})"
        return (
            f"Ray nodes {', '.join(f'{n}={self.address(n)}' for n in self.node_names)} in {where}; "
            f"S3 (moto) at {self.s3.endpoint if self.s3 else '-'}; MLflow server {self.tracking_uri} with a "
            f"{self.backend_store} backend store"
        )

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> FaultCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.network:
                self.network.create()
            with ThreadPoolExecutor(1) as pool:  # the services and the Ray nodes start side by side
                services = pool.submit(self._start_services)
                for name in self.node_names:
                    self.start_node(name)
                self.wait_for_nodes(len(self.node_names))
                services.result()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        self.s3 = S3Store(self.service_host, self.workdir).start()
        reason = postgres_unavailable_reason()
        if reason is None:
            self.postgres = PostgresServer(self.service_host, self.workdir / "pg").start()
            backend_uri, self.backend_store = self.postgres.uri, "PostgreSQL"
        else:
            backend_uri = f"sqlite:///{self.workdir / 'mlflow.db'}"
            self.backend_store = f"SQLite (no PostgreSQL: {reason})"
        self.mlflow = MLflowServer(self.service_host, backend_uri, self.workdir).start()

    def node_env(self) -> dict[str, str]:
        return {
            **os.environ,
            **LOCAL_RAY_ENV,
            **TEST_AWS_ENV,
            **FAST_FAILURE_DETECTION_ENV,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # `0` (LOCAL_RAY_ENV, for one loopback head) refuses a 2nd node
            "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            **({"GLOO_SOCKET_IFNAME": "eth0"} if self.network else {}),  # else gloo binds the shared hostname's
            **self.extra_env,
        }

    def start_node(self, name: str) -> RayNode:
        """Start (or restart) one node's `ray start --block`; returns once the process runs (not yet joined)."""
        ray_cli = str(Path(sys.executable).with_name("ray"))
        ip = self.address(name)
        command = [
            ray_cli,
            "start",
            "--block",
            "--node-ip-address",
            ip,
            "--num-cpus",
            str(self.cpus_per_node),
            "--object-store-memory",
            "150000000",
            "--disable-usage-stats",
        ]
        if name == HEAD:
            command += [
                "--head",
                "--port",
                str(self._gcs_port),
                "--dashboard-host",
                ip,
                "--dashboard-port",
                str(self._dashboard_port),
                "--temp-dir",
                str(self.temp_dir),
            ]
        else:
            command += ["--address", f"{self.address(HEAD)}:{self._gcs_port}"]
        if not self.network:  # side by side on loopback: no two nodes may take the same default ports
            command += ["--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        prefix = self.network.exec_prefix(name) if self.network else []
        process = ManagedProcess(f"ray {name}", [*prefix, *command], self.workdir / f"ray-{name}.log", self.node_env())
        process.start()
        if name == HEAD:
            process.wait_until(lambda: http_ok(f"{self.dashboard_url}/api/version"), 180, "Ray head dashboard")
        self.nodes[name] = RayNode(name, ip, process)
        return self.nodes[name]

    def alive_nodes(self) -> list[dict[str, object]]:
        url = f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=true"
        with urllib.request.urlopen(url, timeout=10) as response:
            rows = json.load(response)["data"]["result"]["result"]
        return [row for row in rows if row.get("state") == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(self.alive_nodes()) == count:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        head_log = self.nodes[HEAD].process.tail()
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s:.0f}s; head log: {head_log}")

    def processes(self, name: str) -> list[psutil.Process]:
        """Every live process of a node: its namespace's, or (loopback) its `ray start` process tree."""
        if self.network:
            pids = self.network.pids(name)
        else:
            root = self.nodes[name].process.process
            if root is None or root.poll() is not None:
                return []
            pids = [root.pid, *(c.pid for c in psutil.Process(root.pid).children(recursive=True))]
        found = []
        for pid in pids:
            try:
                found.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        return found

    def node_of_pid(self, pid: int) -> str | None:
        return next((name for name in self.nodes if pid in {p.pid for p in self.processes(name)}), None)

    def kill_node(self, name: str) -> int:
        """Every process of the node SIGKILLed at once (a machine losing power); returns how many."""
        if self.network:
            killed = self.network.kill_all(name)
        else:
            node = self.nodes[name].process
            assert node.process is not None
            tree = [psutil.Process(node.process.pid), *psutil.Process(node.process.pid).children(recursive=True)]
            for proc in tree:
                proc.kill()
            killed = len(tree)
        self.nodes[name].process.process.wait()  # type: ignore[union-attr]
        return killed

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.nodes[name].process.kill()  # the cluster is thrown away: no graceful shutdown to wait for
        self.nodes.clear()
        for service in (self.mlflow, self.postgres, self.s3):
            if service is not None:
                service.stop()
        if self.network:
            self.network.destroy()
