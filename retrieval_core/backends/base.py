"""The one interface every backend implements, so the service, indexer and benchmark are backend-agnostic."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval_core.documents import Document, ScoredDocument

BM25_K1 = 1.2
BM25_B = 0.75


class BackendError(RuntimeError):
    """The backend could not serve a request (index missing, cluster unreachable, ...)."""


@dataclass
class IndexReport:
    """What an indexing run did; ``unchanged`` makes idempotence visible to users and tests."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    index: str = ""

    @property
    def written(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "errors": self.errors[:20],
        }


@dataclass(frozen=True)
class Health:
    """Readiness of a backend; ``detail`` says why it is not ready."""

    ok: bool
    backend: str
    index: str
    count: int | None = None
    detail: str = ""
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backend": self.backend,
            "index": self.index,
            "count": self.count,
            "detail": self.detail,
            "version": self.version,
        }


ProgressCallback = Callable[[int], None]


class SearchBackend(ABC):
    """BM25 (k1=1.2, b=0.75) over ``title + "\\n" + text`` with the tokenization contract.

    Scores follow Lucene's BM25 formula (idf · tf / (tf + k1 · norm)) whatever the engine: a backend whose engine
    scales them differently undoes that itself, so callers never branch on a backend's name.
    """

    name: str = "abstract"

    @abstractmethod
    def search(self, query: str, k: int) -> list[ScoredDocument]:
        """Top-k passages by BM25, best first; an all-punctuation query returns []."""

    def search_batch(self, queries: Sequence[str], k: int) -> list[list[ScoredDocument]]:
        """One result list per query, in order."""
        return [self.search(q, k) for q in queries]

    @abstractmethod
    def score(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        """BM25 scores of the given documents for ``query``, whether or not they rank in its top-k.

        A document sharing no term with the query scores 0.0; unknown ids are absent. KARD needs this to
        weigh candidates found by the question with the rationale's relevance.
        """

    def score_batch(self, queries: Sequence[str], ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """One score map per (query, ids) pair, in order."""
        return [self.score(q, i) for q, i in zip(queries, ids, strict=True)]

    @abstractmethod
    def version(self) -> str:
        """Identifies the indexed content: it changes whenever documents do, so caches keyed by it stay true."""

    @abstractmethod
    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        """Found documents by id; missing ids are absent from the result."""

    @abstractmethod
    def count(self) -> int:
        """Number of live documents."""

    @abstractmethod
    def health(self) -> Health:
        """Whether the backend can serve queries now."""

    @abstractmethod
    def index_documents(self, documents: Iterable[Document], progress: ProgressCallback | None = None) -> IndexReport:
        """Upsert by id; re-running with the same input changes nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self) -> SearchBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
