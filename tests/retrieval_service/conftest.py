"""Fixtures for the retrieval service tests: small corpora, real tantivy indices, real server processes."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from retrieval_service.backends.tantivy_backend import TantivyBackend
from retrieval_service.documents import iter_passages
from retrieval_service.settings import REPO_ROOT, wikipedia_passages

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "elasticsearch: needs a real Elasticsearch cluster at ELASTICSEARCH_URL"
    )


@pytest.fixture(scope="session")
def corpus() -> list[dict[str, str]]:
    return make_corpus(400)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus: list[dict[str, str]]) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "passages.jsonl", corpus)


@pytest.fixture(scope="session")
def wiki_path() -> Path:
    path = wikipedia_passages()
    if not path.is_file():
        pytest.skip(f"shared Wikipedia passages not found at {path} (set REASONDISTILL_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    path = tmp_path_factory.mktemp("corpus_index") / "index"
    with TantivyBackend(path, create=True) as backend:
        backend.index_documents(iter_passages(corpus_file))
    return path


@pytest.fixture(scope="session")
def wiki_index(tmp_path_factory: pytest.TempPathFactory, wiki_path: Path) -> Path:
    path = tmp_path_factory.mktemp("wiki_index") / "index"
    with TantivyBackend(path, create=True) as backend:
        backend.index_documents(iter_passages(wiki_path))
    return path


class ServerProcess:
    """``python -m retrieval_service serve`` as a real subprocess on an ephemeral 127.0.0.1 port."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, workers: int = 2) -> None:
        self.port = free_port()
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
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.proc.stdout.read()}")
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


@pytest.fixture(scope="session")
def server(corpus_index: Path) -> Iterator[ServerProcess]:
    """Two uvicorn workers on the small corpus index, no auth."""
    proc = ServerProcess(["--index", str(corpus_index)], workers=2).wait_live()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def auth_server(corpus_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker with bearer-token auth from a secret file and tight limits."""
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text("s3cret-token\n", encoding="utf-8")
    proc = ServerProcess(
        [
            "--index",
            str(corpus_index),
            "--token-file",
            str(token_file),
            "--max-k",
            "5",
            "--max-batch",
            "3",
            "--max-query-chars",
            "50",
        ],
        workers=1,
    ).wait_live()
    yield proc
    proc.stop()
