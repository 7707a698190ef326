"""Fixtures for the retrieval service tests: real server processes over the small corpus index (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval_service.local_server import ServerProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "elasticsearch: needs a real Elasticsearch cluster at ELASTICSEARCH_URL")


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
