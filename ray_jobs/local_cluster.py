"""A throw-away Ray head on loopback for runs without a cluster address.

Stopping it does not wait for Ray's orderly shutdown (30-60 s here, and it can leave the dashboard, monitor and
client server running): the head's process tree is a throw-away, so every process in it gets SIGTERM at once and
SIGKILL after a short grace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import psutil

from trainer.tracking import timeline

# Without the first, Ray swaps 127.0.0.1 for the eth0 address; without the second, a token written by an
# earlier plain ray.init() switches auth on and job submission fails (see README, "Ray on one machine").
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_STOP_ROUNDS = 5  # scans of the head's processes while stopping it (one suffices unless a worker was forking)


class LocalRayHead:
    """`ray start --head --block` in its own process group; leaving the block stops it and its workers."""

    def __init__(
        self, num_cpus: int, log_file: Path, startup_timeout_s: float = 120.0, stop_grace_s: float = 1.0
    ) -> None:
        self.num_cpus = num_cpus
        self.log_file = log_file
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self._stopped = False
        self.dashboard_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def __enter__(self) -> LocalRayHead:
        timeline.mark("head.start")
        # `python -m` rather than the `ray` script beside the interpreter: Ray installed with `pip --target`
        # (the offline GPU machines, scripts/install_gpu.py) has no bin/ray there.
        command = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--ray-client-server-port",  # default 10001: a second head on the machine would collide
            str(free_port()),
            "--num-cpus",
            str(self.num_cpus),
            "--object-store-memory",
            "500000000",
            "--disable-usage-stats",
        ]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **LOCAL_RAY_ENV},
                start_new_session=True,
            )
        self._wait_until_ready()
        timeline.mark("head.ready")
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"local Ray head not ready after {self.startup_timeout_s:.0f}s; see {self.log_file}")

    def processes(self) -> list[psutil.Process]:
        """Every process of this head: `ray start`'s descendants (workers, job drivers in their own sessions)
        and whatever is left in its process group after a parent exited."""
        if self.process is None:
            return []
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            found = {p.pid: p for p in [root, *root.children(recursive=True)]}
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if proc.pid not in found and os.getpgid(proc.pid) == self.process.pid:
                    found[proc.pid] = proc
                    found.update((child.pid, child) for child in proc.children(recursive=True))
        return list(found.values())

    def stop(self) -> None:
        """SIGTERM to the whole tree at once, SIGKILL to what is left after the grace; returns when all are gone."""
        if self.process is None or self._stopped:
            return
        self._stopped = True
        timeline.mark("head.stop")
        # A worker the raylet forked while the tree was being signalled shows up (in the head's process group)
        # only on a later scan: scan again until one finds nothing running.
        for _ in range(_STOP_ROUNDS):
            processes = [p for p in self.processes() if _running(p)]
            if not processes:
                break
            _signal_all(processes, psutil.Process.terminate)
            alive = _wait_gone(processes, self.stop_grace_s)
            _signal_all(alive, psutil.Process.kill)
            _wait_gone(alive, 10.0)
        self.process.wait()
        timeline.mark("head.stopped")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal_all(processes: list[psutil.Process], send: Callable[[psutil.Process], None]) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            send(proc)


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie's parent was killed too; init reaps it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process exited; returns the ones still running."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    return alive
