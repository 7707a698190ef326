"""Integration tests against a real Elasticsearch cluster; skipped unless ELASTICSEARCH_URL is set.

Never run in this repository's CI or on the development machine (no cluster can be installed there);
they are what to run on a cluster:
``ELASTICSEARCH_URL=https://... pytest -m elasticsearch tests/retrieval_service``.
Connection settings (credentials, TLS) come from the same environment variables as the service.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval_core.backends.elasticsearch_backend import ElasticsearchBackend, ElasticsearchSettings
from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_core.documents import Document, iter_passages
from retrieval_core.tokenization import tokenize

pytestmark = [
    pytest.mark.elasticsearch,
    pytest.mark.skipif(not os.environ.get("ELASTICSEARCH_URL"), reason="ELASTICSEARCH_URL not set"),
]


@pytest.fixture
def es_backend() -> Iterator[ElasticsearchBackend]:
    settings = ElasticsearchSettings.from_env(alias=f"kard-it-{uuid.uuid4().hex[:8]}")
    backend = ElasticsearchBackend(settings)
    yield backend
    for index in backend.versions():
        backend.es.indices.delete(index=index)
    backend.close()


def test_analyzer_matches_tantivy_tokenization(es_backend: ElasticsearchBackend, corpus_file: Path) -> None:
    index = es_backend.create_version()
    samples = ["Hello, WORLD! don't C++ 3.14 naïve ΟΔΟΣ Straße", "x" * 39 + " " + "y" * 40]
    samples += [d.contents for d in list(iter_passages(corpus_file))[:50]]
    for text in samples:
        tokens = es_backend.es.indices.analyze(index=index, analyzer="kard_text", text=text).body["tokens"]
        assert [t["token"] for t in tokens] == tokenize(text)


def test_ranking_parity_with_tantivy(es_backend: ElasticsearchBackend, corpus_file: Path, corpus_index: Path) -> None:
    """Same top-10 and the same (Lucene) scores as the tantivy backend on a one-shard index."""
    docs = list(iter_passages(corpus_file))
    report = es_backend.index_documents(docs, rebuild=True)
    assert report.failed == 0 and es_backend.count() == len(docs)
    queries = [d.title for d in docs[:40]] + ["river ocean", "tiger tiger lion"]
    with TantivyBackend(corpus_index) as tantivy_backend:
        for query in queries:
            es_hits, tv_hits = es_backend.search(query, 10), tantivy_backend.search(query, 10)
            es_scores = [h.score for h in es_hits]
            assert es_scores == pytest.approx([h.score for h in tv_hits], rel=1e-3), query
            cut = (tv_hits[-1].score if tv_hits else 0.0) * (1 + 1e-3)  # ties at the cut-off may differ
            assert {h.id for h, s in zip(es_hits, es_scores, strict=True) if s > cut} == {
                h.id for h in tv_hits if h.score > cut
            }, query


def test_rebuild_alias_swap_and_bulk_errors(es_backend: ElasticsearchBackend) -> None:
    es_backend.index_documents([Document("a", "A", "first version")])
    old = es_backend.versions()
    es_backend.index_documents([Document("a", "A", "second version"), Document("b", "B", "x")], rebuild=True)
    assert es_backend.versions() != old and es_backend.count() == 2
    report = es_backend.index_documents([Document("x" * 600, "long id", "rejected by Elasticsearch")])
    assert report.failed == 1 and "document 'xxx" in report.errors[0]


def test_score_parity_with_tantivy(es_backend: ElasticsearchBackend, corpus_file: Path, corpus_index: Path) -> None:
    """score() of listed ids, ranked or not, equals the tantivy backend's."""
    docs = list(iter_passages(corpus_file))
    es_backend.index_documents(docs, rebuild=True)
    ids = [d.id for d in docs[:60]]
    with TantivyBackend(corpus_index) as tantivy_backend:
        for query in ("river ocean", "tiger tiger lion", docs[3].title):
            es_scores, tv_scores = es_backend.score(query, ids), tantivy_backend.score(query, ids)
            assert set(es_scores) == set(tv_scores) == set(ids)
            for doc_id in ids:
                assert es_scores[doc_id] == pytest.approx(tv_scores[doc_id], rel=1e-3, abs=1e-6)
