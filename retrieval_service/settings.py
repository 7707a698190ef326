"""Configuration from flags and environment, resolved in one place so workers and CLI agree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_core.backends import DEFAULT_ES_ALIAS
from retrieval_core.credentials import read_secret

REPO_ROOT = Path(__file__).resolve().parent.parent

# Environment variable names (documented in docs/retrieval_service.md).
ENV_DATA_DIR = "REASONDISTILL_DATA_DIR"
ENV_BACKEND = "RETRIEVAL_BACKEND"
ENV_INDEX = "RETRIEVAL_INDEX"
ENV_TOKEN = "RETRIEVAL_API_TOKEN"
ENV_TOKEN_FILE = "RETRIEVAL_API_TOKEN_FILE"
ENV_MAX_QUERY_CHARS = "RETRIEVAL_MAX_QUERY_CHARS"
ENV_MAX_K = "RETRIEVAL_MAX_K"
ENV_MAX_BATCH = "RETRIEVAL_MAX_BATCH"
ENV_RERANKER = "RETRIEVAL_RERANKER"
ENV_RERANK_CANDIDATES = "RETRIEVAL_RERANK_CANDIDATES"

DEFAULT_INDEX_DIR = REPO_ROOT / "runs" / "retrieval_index"


def data_dir() -> Path:
    """Shared data lives outside the repo; never copy it in."""
    return Path(os.environ.get(ENV_DATA_DIR, str(REPO_ROOT.parent / "shared" / "data"))).resolve()


def wikipedia_passages() -> Path:
    return data_dir() / "wikipedia" / "passages.jsonl.gz"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be positive")
    return value


@dataclass(frozen=True)
class Limits:
    """Request limits; they bound memory and latency per request, so they are enforced as 4xx errors."""

    max_query_chars: int = 1024
    max_k: int = 100
    max_batch: int = 256

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_query_chars=_env_int(ENV_MAX_QUERY_CHARS, cls.max_query_chars),
            max_k=_env_int(ENV_MAX_K, cls.max_k),
            max_batch=_env_int(ENV_MAX_BATCH, cls.max_batch),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What a service worker needs to open its backend; read from env so every uvicorn worker agrees."""

    backend: str = "tantivy"
    index: str = str(DEFAULT_INDEX_DIR)
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    reranker: str | None = None  # a KARD reranker (dir or runs:/ URI) for requests with "rerank": true
    rerank_candidates: int = 100  # BM25 hits the reranker orders (KARD's N)

    @classmethod
    def from_env(cls) -> ServiceSettings:
        backend = os.environ.get(ENV_BACKEND, "tantivy")
        default_index = DEFAULT_ES_ALIAS if backend == "elasticsearch" else str(DEFAULT_INDEX_DIR)
        return cls(
            backend=backend,
            index=os.environ.get(ENV_INDEX, default_index),
            token=read_secret(ENV_TOKEN, ENV_TOKEN_FILE),
            limits=Limits.from_env(),
            reranker=os.environ.get(ENV_RERANKER) or None,
            rerank_candidates=_env_int(ENV_RERANK_CANDIDATES, cls.rerank_candidates),
        )
