"""One retrieval interface for KARD over three modes: the embedded tantivy index in-process, the HTTP retrieval
service, or Elasticsearch. A RetrieverSpec is a small picklable description, so Ray Data actors open their own.

Scores come back in one convention whatever the mode, Lucene's BM25, because every backend (retrieval_core.backends)
returns them so, behind the service too: rationale-relevance targets do not change scale when the backend does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrieval_core.backends import DEFAULT_ES_ALIAS, SearchBackend, create_backend
from retrieval_core.documents import Document
from retrieval_service.client import RetrievalClient
from retrieval_service.indexer import index_files
from trainer.config.schema import RetrievalConfig

Hit = tuple[str, float]  # passage id, BM25 score


class RetrievalSetupError(ValueError):
    """A retrieval configuration that cannot be opened; names the config field."""


@dataclass(frozen=True)
class RetrieverSpec:
    mode: Literal["embedded", "http", "elasticsearch"]
    index: str  # embedded: index dir; elasticsearch: alias; http: unused
    url: str | None = None
    token_env: str = "RETRIEVAL_API_TOKEN"
    timeout_s: float = 30.0
    retries: int = 3
    batch_size: int = 64
    corpus_version: str | None = None  # embedded index built from a corpus file: that file's content hash

    def open(self) -> Retriever:
        if self.mode == "embedded":
            return Retriever(create_backend("tantivy", self.index))
        if self.mode == "elasticsearch":
            if self.url:
                os.environ.setdefault("ELASTICSEARCH_URL", self.url)
            return Retriever(create_backend("elasticsearch", self.index))
        client = RetrievalClient(
            self.url or "",
            token=os.environ.get(self.token_env) or None,
            timeout=self.timeout_s,
            retries=self.retries,
            batch_size=self.batch_size,
        )
        return Retriever(client)


class Retriever:
    """search_batch / score_batch / version over a backend or the HTTP client, scores in Lucene's convention."""

    def __init__(self, source: SearchBackend | RetrievalClient) -> None:
        self.source = source

    def search_batch(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """(id, score) per hit, best first; passage texts are fetched once per id with get()."""
        return [[(d.id, d.score) for d in hits] for hits in self.source.search_batch(list(queries), k)]

    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        if isinstance(self.source, RetrievalClient):
            return {d.id: d for d in self.source.get(list(ids)) if d is not None}
        return self.source.get(list(ids))

    def score_batch(self, queries: Sequence[str], ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        return self.source.score_batch(list(queries), ids)

    def version(self) -> str:
        return self.source.version()

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_fingerprint(path: Path) -> str:
    """Content hash of a corpus file (streamed), so an index built from it is found again only if it is unchanged."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def build_embedded_index(corpus: Path, index_dir: Path) -> Path:
    """Index the corpus into index_dir unless it is already there. Built beside it and renamed into place under a
    file lock, so concurrent builders (ranks, actors, resubmissions) never see or make a half-built index."""
    if (index_dir / "meta.json").is_file():
        return index_dir
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(index_dir.parent / f".{index_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (index_dir / "meta.json").is_file():
            return index_dir
        staging = Path(tempfile.mkdtemp(dir=index_dir.parent, prefix=f".{index_dir.name}."))
        try:
            with create_backend("tantivy", str(staging), create=True) as backend:
                run = index_files(backend, [corpus], on_malformed="fail", progress=False)
            if run.report.written == 0:
                raise RetrievalSetupError(f"retrieval.corpus: {corpus} holds no passages")
            staging.rename(index_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return index_dir


def resolve_retriever(cfg: RetrievalConfig, cache_dir: Path, default_corpus: Path | None) -> RetrieverSpec:
    """The spec for the configured mode; the embedded mode builds its index from the corpus first if needed."""
    common: dict[str, Any] = {"timeout_s": cfg.timeout_s, "retries": cfg.retries, "batch_size": cfg.batch_size}
    if cfg.mode == "http":
        if not cfg.url:
            raise RetrievalSetupError("retrieval.url: the http mode needs the retrieval service's URL")
        return RetrieverSpec("http", "", url=cfg.url, token_env=cfg.token_env, **common)
    if cfg.mode == "elasticsearch":
        url = cfg.url or os.environ.get("ELASTICSEARCH_URL")
        if not url:
            raise RetrievalSetupError("retrieval.url: set it (or ELASTICSEARCH_URL) for the elasticsearch mode")
        return RetrieverSpec("elasticsearch", cfg.index or DEFAULT_ES_ALIAS, url=url, **common)
    if cfg.index and (Path(cfg.index) / "meta.json").is_file():
        return RetrieverSpec("embedded", str(Path(cfg.index).resolve()), **common)
    corpus = Path(cfg.corpus).expanduser() if cfg.corpus else default_corpus
    if corpus is None or not corpus.is_file():
        raise RetrievalSetupError(
            f"retrieval.corpus: {corpus or 'no corpus'} not found; give an id/title/text JSONL(.gz) file "
            "(or retrieval.index, an existing index directory)"
        )
    fingerprint = file_fingerprint(corpus)
    index_dir = Path(cfg.index) if cfg.index else cache_dir / "indexes" / f"{corpus.stem}-{fingerprint}"
    built = build_embedded_index(corpus.resolve(), index_dir.resolve())
    return RetrieverSpec("embedded", str(built), corpus_version=f"corpus-{fingerprint}", **common)
