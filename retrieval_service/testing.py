"""Helpers for tests that need real parts: a deterministic corpus and the service as a real process.

Shared with the trainer's tests, which can start a real retrieval server the same way.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from retrieval_service.settings import REPO_ROOT

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "omega",
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "city",
    "village",
    "castle",
    "bridge",
    "tower",
    "garden",
    "library",
    "museum",
    "engine",
    "rocket",
    "planet",
    "comet",
    "galaxy",
    "atom",
    "molecule",
    "protein",
    "enzyme",
    "gene",
    "cell",
    "virus",
    "bacteria",
    "fungus",
    "algae",
    "coral",
    "whale",
    "eagle",
    "falcon",
    "tiger",
    "lion",
    "wolf",
    "bear",
    "violin",
    "piano",
    "guitar",
    "drum",
    "opera",
    "ballet",
    "poem",
    "novel",
    "theorem",
    "proof",
    "lemma",
    "matrix",
    "vector",
    "tensor",
    "graph",
    "tree",
]


def make_corpus(n: int, seed: int = 7) -> list[dict[str, str]]:
    """Deterministic Latin-script passages with skewed term frequencies and varied lengths."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]
    rows = []
    for i in range(n):
        title = " ".join(rng.choices(WORDS, weights, k=rng.randint(1, 3))).title()
        text = " ".join(rng.choices(WORDS, weights, k=rng.randint(3, 80)))
        rows.append({"id": f"doc-{i}", "title": title, "text": text})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m retrieval_service serve`` as a real subprocess on an ephemeral 127.0.0.1 port."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, workers: int = 2, port: int | None = None
    ) -> None:
        self.port = port or free_port()  # a fixed port restarts "the same" service
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "retrieval_service",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            *args,
        ]
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def wait_live(self, timeout: float = 30.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {output}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up within {timeout}s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""
