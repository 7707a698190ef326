"""Fixtures for the retrieval service tests: small corpora, real tantivy indices, real server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval_service.backends.tantivy_backend import TantivyBackend
from retrieval_service.documents import iter_passages
from retrieval_service.local_server import ServerProcess
from retrieval_service.settings import wikipedia_passages
from support.retrieval_corpus import make_corpus, write_jsonl


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "elasticsearch: needs a real Elasticsearch cluster at ELASTICSEARCH_URL")


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
