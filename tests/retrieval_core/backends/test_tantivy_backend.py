"""The embedded tantivy backend on a real on-disk index: API, idempotent upserts, BM25 parity."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from retrieval_core.backends import BackendError, create_backend
from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_core.documents import Document, iter_passages
from retrieval_core.tokenization import reference_tokenize

K1, B = 1.2, 0.75


def _int_to_byte4(i: int) -> int:
    """Lucene SmallFloat.intToByte4: the one-byte document length both Lucene and tantivy store."""
    if i < 24:
        return i
    v = i - 24
    bits = v.bit_length()
    if bits < 4:
        return 24 + v
    shift = bits - 4
    return 24 + (((v >> shift) & 0x07) | ((shift + 1) << 3))


def _byte4_to_int(b: int) -> int:
    if b < 24:
        return b
    i = b - 24
    bits, shift = i & 0x07, (i >> 3) - 1
    return 24 + (bits if shift == -1 else (bits | 0x08) << shift)


class ReferenceBM25:
    """Lucene-8 BM25 written from the formula, with pure-Python tokens; no tantivy involved."""

    def __init__(self, docs: list[Document]) -> None:
        self.ids = [d.id for d in docs]
        self.tfs = [Counter(reference_tokenize(d.contents)) for d in docs]
        lengths = [sum(tf.values()) for tf in self.tfs]
        self.avgdl = sum(lengths) / len(lengths)
        self.norms = [_byte4_to_int(_int_to_byte4(n)) for n in lengths]
        self.df: Counter[str] = Counter()
        for tf in self.tfs:
            self.df.update(tf.keys())
        self.n = len(docs)

    def score(self, query: str, index: int) -> float:
        total = 0.0
        for term in reference_tokenize(query):  # repeated terms count again, as in Lucene's match query
            tf = self.tfs[index].get(term, 0)
            if not tf:
                continue
            idf = math.log(1 + (self.n - self.df[term] + 0.5) / (self.df[term] + 0.5))
            total += idf * tf / (tf + K1 * (1 - B + B * self.norms[index] / self.avgdl))
        return total

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        scored = [(self.ids[i], self.score(query, i)) for i in range(self.n)]
        scored = [s for s in scored if s[1] > 0]
        return sorted(scored, key=lambda s: -s[1])[:k]


def test_bm25_parity_with_independent_reference(corpus_index: Path, corpus_file: Path) -> None:
    """The backend's scores = Lucene BM25 (tantivy's (k1 + 1) factor removed by the backend); ranks agree up to ties,
    scores to float32 precision."""
    docs = list(iter_passages(corpus_file))
    reference = ReferenceBM25(docs)
    by_id = {d: i for i, d in enumerate(reference.ids)}
    rng = random.Random(3)
    vocabulary = sorted({t for tf in reference.tfs for t in tf})
    queries = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 4))) for _ in range(60)]
    queries += [d.title for d in docs[:20]] + ["river river ocean"]
    with TantivyBackend(corpus_index) as backend:
        for query in queries:
            hits = backend.search(query, 10)
            expected = reference.top(query, 10)
            assert len(hits) == len(expected), query
            for hit, (_, ref_score) in zip(hits, expected, strict=True):
                assert hit.score == pytest.approx(ref_score, rel=2e-4), query
                assert hit.score == pytest.approx(reference.score(query, by_id[hit.id]), rel=2e-4)


def test_search_get_count_health(corpus_index: Path, corpus: list[dict[str, str]]) -> None:
    with create_backend("tantivy", str(corpus_index)) as backend:
        assert backend.count() == len(corpus)
        health = backend.health()
        assert health.ok and health.count == len(corpus) and health.backend == "tantivy"
        hits = backend.search(corpus[5]["title"], 3)
        assert 1 <= len(hits) <= 3
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert backend.search("!!! ???", 5) == []
        assert backend.search("nonexistentword", 5) == []
        batch = backend.search_batch(["river", "!!", corpus[1]["title"]], 2)
        assert [len(b) for b in batch][:2] == [2, 0]
        assert batch[0] == backend.search("river", 2)
        found = backend.get(["doc-1", "missing", "doc-2", "doc-1"])
        assert set(found) == {"doc-1", "doc-2"}
        assert found["doc-1"] == Document(**corpus[1])


def test_opening_missing_or_foreign_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no tantivy index here"):
        TantivyBackend(tmp_path / "absent")
    with pytest.raises(ValueError, match="unknown backend 'solr'"):
        create_backend("solr", str(tmp_path))


def test_upsert_is_idempotent_and_replaces_changed_documents(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", f"Title {i}", f"body words number {i}") for i in range(50)]
    with TantivyBackend(tmp_path / "i", create=True) as backend:
        first = backend.index_documents(docs)
        assert (first.added, first.updated, first.unchanged) == (50, 0, 0)
        files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "i").iterdir()}
        again = backend.index_documents(docs)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 50)
        assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "i").iterdir()} == files
        changed = [Document("d3", "Title 3", "completely new zebra text"), Document("d99", "New", "zebra")]
        third = backend.index_documents(changed + docs[:2])
        assert (third.added, third.updated, third.unchanged) == (1, 1, 2)
        assert backend.count() == 51
        assert {h.id for h in backend.search("zebra", 5)} == {"d3", "d99"}
        assert backend.get(["d3"])["d3"].text == "completely new zebra text"
        dup = backend.index_documents([Document("d5", "x", "first"), Document("d5", "x", "second")])
        assert dup.written == 2 and backend.count() == 51
        assert backend.get(["d5"])["d5"].text == "second"


def test_failed_run_commits_nothing(tmp_path: Path) -> None:
    """An error mid-stream rolls back: readers never see a half-written batch."""
    with TantivyBackend(tmp_path / "i", create=True) as backend:
        backend.index_documents([Document("a", "A", "kept")])

        def broken():
            yield Document("b", "B", "never visible")
            raise RuntimeError("input died")

        with pytest.raises(RuntimeError, match="input died"):
            backend.index_documents(broken())
        assert backend.count() == 1 and backend.get(["b"]) == {}


def test_wikipedia_index_answers_title_queries(wiki_index: Path) -> None:
    with TantivyBackend(wiki_index) as backend:
        assert backend.count() == 11680
        assert backend.search("M-tree metric space triangle inequality", 1)[0].id == "27481099_2"


def test_score_gives_bm25_of_listed_documents_ranked_or_not(corpus_index: Path) -> None:
    with create_backend("tantivy", str(corpus_index)) as backend:
        hits = backend.search("river ocean tiger", 30)
        scored = backend.score("river ocean tiger", [h.id for h in hits] + ["missing"])
        assert set(scored) == {h.id for h in hits}  # unknown ids are absent
        for hit in hits:
            assert scored[hit.id] == pytest.approx(hit.score, rel=1e-6)  # same BM25 as the ranked search
        unrelated = next(d.id for d in backend.search("violin", 400) if d.id not in scored)
        assert backend.score("river ocean tiger", [unrelated, hits[-1].id])[unrelated] >= 0.0
        no_terms = backend.score("zzzunknownterm", [hits[0].id])
        assert no_terms == {hits[0].id: 0.0}  # listed, matched by id, sharing no term: 0.0
        assert backend.score_batch(["river", "tiger"], [[hits[0].id], []]) == [
            backend.score("river", [hits[0].id]),
            {},
        ]


def test_version_changes_with_the_content(tmp_path: Path) -> None:
    with TantivyBackend(tmp_path / "index", create=True) as backend:
        backend.index_documents([Document("a", "A", "alpha text")])
        first = backend.version()
        backend.index_documents([Document("a", "A", "alpha text")])  # unchanged: nothing committed
        assert backend.version() == first and backend.health().version == first
        backend.index_documents([Document("b", "B", "beta text")])
        assert backend.version() != first
