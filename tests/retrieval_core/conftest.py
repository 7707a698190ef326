"""Fixtures for the retrieval core's tests: the shared Wikipedia passages and a real tantivy index over them (the
small synthetic corpus and its index are in tests/conftest.py, shared with the service's tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_core.documents import iter_passages
from retrieval_service.settings import wikipedia_passages


@pytest.fixture(scope="session")
def wiki_path() -> Path:
    path = wikipedia_passages()
    if not path.is_file():
        pytest.skip(f"shared Wikipedia passages not found at {path} (set REASONDISTILL_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def wiki_index(tmp_path_factory: pytest.TempPathFactory, wiki_path: Path) -> Path:
    path = tmp_path_factory.mktemp("wiki_index") / "index"
    with TantivyBackend(path, create=True) as backend:
        backend.index_documents(iter_passages(wiki_path))
    return path
