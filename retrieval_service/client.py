"""Python client the KARD trainer uses: timeouts, retries with backoff, batching, typed results."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

from retrieval_core.documents import Document, ScoredDocument

__all__ = ["RetrievalClient", "RetrievalError"]

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class RetrievalError(RuntimeError):
    """The service refused or failed a request; ``status`` is the HTTP status (None for network errors)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _describe(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200], None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = [f"{d.get('field')}: {d.get('message')}" for d in detail if isinstance(d, dict)]
        return "; ".join(parts) or str(body), body
    return str(body), body


class RetrievalClient:
    """Thread-safe HTTP client; idempotent calls are retried on network errors, 429 and 5xx."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        batch_size: int = 64,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers, transport=transport
        )

    def _request(self, method: str, path: str, json: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise RetrievalError(
                        f"retrieval service {self.base_url} unreachable: {method} {path} failed "
                        f"{attempt + 1} time(s): {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                if response.status_code in ok:
                    return response.json()
                message, body = _describe(response)
                if response.status_code not in RETRYABLE_STATUS or attempt == self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise RetrievalError(
                        f"retrieval service {self.base_url}: {method} {path}: HTTP {response.status_code}{tries}: "
                        f"{message}",
                        response.status_code,
                        body,
                    )
            time.sleep(delay * (0.5 + random.random() / 2))
            delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _scored(rows: list[dict[str, Any]]) -> list[ScoredDocument]:
        return [ScoredDocument(r["id"], r["title"], r["text"], float(r["score"])) for r in rows]

    def search(self, query: str, k: int = 10, rerank: bool = False) -> list[ScoredDocument]:
        """Top-k passages for ``query``, best first; ``rerank`` asks for the service's KARD reranker order."""
        body = self._request("POST", "/search", {"query": query, "k": k, "rerank": rerank})
        return self._scored(body["results"])

    def search_batch(self, queries: Sequence[str], k: int = 10, rerank: bool = False) -> list[list[ScoredDocument]]:
        """One result list per query, sent ``batch_size`` queries per request."""
        results: list[list[ScoredDocument]] = []
        for start in range(0, len(queries), self.batch_size):
            chunk = list(queries[start : start + self.batch_size])
            body = self._request("POST", "/search/batch", {"queries": chunk, "k": k, "rerank": rerank})
            results.extend(self._scored(rows) for rows in body["results"])
        return results

    def score(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        """BM25 scores of the listed passages for ``query``, in Lucene's convention whatever the service's backend
        (see SearchBackend.score)."""
        return self._request("POST", "/score", {"query": query, "ids": list(ids)})["scores"]

    def score_batch(self, queries: Sequence[str], ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """One score map per (query, ids) pair, sent ``batch_size`` pairs per request."""
        items = [{"query": q, "ids": list(i)} for q, i in zip(queries, ids, strict=True)]
        scores: list[dict[str, float]] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            scores.extend(self._request("POST", "/score/batch", {"items": chunk})["scores"])
        return scores

    def version(self) -> str:
        """The served index's content version (see SearchBackend.version)."""
        return str(self.health()["version"])

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        """Documents aligned with ``ids``; None where the id is unknown."""
        found: dict[str, Document] = {}
        for start in range(0, len(ids), self.batch_size):
            chunk = list(ids[start : start + self.batch_size])
            body = self._request("POST", "/documents/mget", {"ids": chunk})
            for row in body["documents"]:
                found[row["id"]] = Document(row["id"], row["title"], row["text"])
        return [found.get(i) for i in ids]

    def health(self) -> dict[str, Any]:
        """The readiness report (backend, index, count); raises RetrievalError when not ready."""
        return self._request("GET", "/readyz")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
