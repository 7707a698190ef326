"""Embedded default backend: an on-disk tantivy index, BM25 k1=1.2 b=0.75, no server to run.

tantivy's BM25 keeps the (k1 + 1) factor of the textbook formula that Lucene drops; every score leaves this module
divided by it, in Lucene's convention like every backend's (the ranking is unchanged).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import tantivy

from retrieval_core.backends.base import (
    BM25_K1,
    BackendError,
    Health,
    IndexReport,
    ProgressCallback,
    SearchBackend,
)
from retrieval_core.documents import Document, ScoredDocument
from retrieval_core.tokenization import TANTIVY_TOKENIZER, tokenize

FIELD_ID = "id"
FIELD_CONTENTS = "contents"
FIELD_TITLE = "title"
FIELD_TEXT = "text"
FIELD_FINGERPRINT = "fingerprint"
_REQUIRED_FIELDS = (FIELD_ID, FIELD_CONTENTS, FIELD_TITLE, FIELD_TEXT, FIELD_FINGERPRINT)
_CHUNK = 1024
LUCENE_SCALE = 1.0 / (1.0 + BM25_K1)  # tantivy's score x this = Lucene's BM25


def build_schema() -> tantivy.Schema:
    """Only ``contents`` is searched (BM25 needs term frequencies, not positions); the rest is stored."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field(FIELD_ID, stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field(FIELD_CONTENTS, stored=False, tokenizer_name=TANTIVY_TOKENIZER, index_option="freq")
    builder.add_bytes_field(FIELD_TITLE, stored=True)
    builder.add_bytes_field(FIELD_TEXT, stored=True)
    builder.add_bytes_field(FIELD_FINGERPRINT, stored=True)
    return builder.build()


def fingerprint(doc: Document) -> bytes:
    """Content hash, so re-indexing an unchanged passage is skipped instead of rewritten."""
    return hashlib.blake2b(f"{doc.title}\x00{doc.text}".encode(), digest_size=16).digest()


def _id_of(raw: tantivy.Document) -> str:
    """A stored document's id (tantivy types a field's first value as optional; every document here has one)."""
    doc_id = raw.get_first(FIELD_ID)
    if not isinstance(doc_id, str):
        raise ValueError(f"tantivy index: a document without a string {FIELD_ID!r} field")
    return doc_id


def _chunks(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class TantivyBackend(SearchBackend):
    """One index directory; readers pick up commits from other processes (e.g. a running indexer)."""

    name = "tantivy"

    def __init__(self, path: str | Path, create: bool = False, writer_heap_bytes: int = 256_000_000) -> None:
        self.path = Path(path)
        self._writer_heap = writer_heap_bytes
        self._write_lock = threading.Lock()
        if self.path.is_dir() and tantivy.Index.exists(str(self.path)):
            try:
                self._index = tantivy.Index.open(str(self.path))
            except ValueError as exc:
                raise BackendError(f"{self.path}: cannot open tantivy index ({exc})") from None
            self._check_schema()
        elif create:
            self.path.mkdir(parents=True, exist_ok=True)
            self._index = tantivy.Index(build_schema(), str(self.path), reuse=False)
        else:
            raise BackendError(
                f"{self.path}: no tantivy index here; build one with `python -m retrieval_service index`"
            )
        self._schema = self._index.schema
        self._index.config_reader("commit", 0)

    def _check_schema(self) -> None:
        schema = self._index.schema
        for field in (FIELD_ID, FIELD_CONTENTS):
            try:
                tantivy.Query.term_query(schema, field, "probe")
            except ValueError:
                raise BackendError(f"{self.path}: not a retrieval_service index (no field '{field}')") from None

    def _term(self, token: str) -> tantivy.Query:
        return tantivy.Query.term_query(self._schema, FIELD_CONTENTS, token, index_option="freq")

    def _query(self, text: str) -> tantivy.Query | None:
        tokens = tokenize(text)
        if not tokens:
            return None
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, self._term(t)) for t in tokens])

    @staticmethod
    def _to_document(raw: tantivy.Document) -> Document:
        return Document(
            id=_id_of(raw),
            title=bytes(raw.get_first(FIELD_TITLE) or b"").decode("utf-8"),
            text=bytes(raw.get_first(FIELD_TEXT) or b"").decode("utf-8"),
        )

    def search(self, query: str, k: int) -> list[ScoredDocument]:
        return self._search(self._index.searcher(), query, k)

    def _search(self, searcher: tantivy.Searcher, query: str, k: int) -> list[ScoredDocument]:
        parsed = self._query(query)
        if parsed is None:
            return []
        hits = searcher.search(parsed, k, count=False).hits
        out = []
        for score, address in hits:
            doc = self._to_document(searcher.doc(address))
            out.append(ScoredDocument(doc.id, doc.title, doc.text, float(score) * LUCENE_SCALE))
        return out

    def search_batch(self, queries: Sequence[str], k: int) -> list[list[ScoredDocument]]:
        searcher = self._index.searcher()  # one snapshot for the whole batch
        return [self._search(searcher, q, k) for q in queries]

    def score(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        return self._score(self._index.searcher(), query, ids)

    def score_batch(self, queries: Sequence[str], ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        searcher = self._index.searcher()
        return [self._score(searcher, q, i) for q, i in zip(queries, ids, strict=True)]

    def _score(self, searcher: tantivy.Searcher, query: str, ids: Sequence[str]) -> dict[str, float]:
        """The id set is a zero-scoring Must clause and the query terms optional Should clauses, so every listed
        document matches and scores exactly its BM25 for the query (0.0 when it shares no term), Lucene-scaled."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        only_ids = tantivy.Query.const_score_query(tantivy.Query.term_set_query(self._schema, FIELD_ID, unique), 0.0)
        clauses = [(tantivy.Occur.Must, only_ids)]
        clauses += [(tantivy.Occur.Should, self._term(t)) for t in tokenize(query)]
        hits = searcher.search(tantivy.Query.boolean_query(clauses), len(unique), count=False).hits
        return {_id_of(searcher.doc(address)): float(score) * LUCENE_SCALE for score, address in hits}

    def version(self) -> str:
        """Hash of the index's meta.json, which every commit rewrites, plus the live document count."""
        meta = self.path / "meta.json"
        digest = hashlib.sha256(meta.read_bytes()).hexdigest()[:16] if meta.is_file() else "empty"
        return f"tantivy-{digest}-{self.count()}"

    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        if not ids:
            return {}
        searcher = self._index.searcher()
        unique = list(dict.fromkeys(ids))
        query = tantivy.Query.term_set_query(self._schema, FIELD_ID, unique)
        hits = searcher.search(query, len(unique), count=False).hits
        found = (self._to_document(searcher.doc(address)) for _, address in hits)
        return {doc.id: doc for doc in found}

    def _fingerprints(self, searcher: tantivy.Searcher, ids: list[str]) -> dict[str, bytes]:
        query = tantivy.Query.term_set_query(self._schema, FIELD_ID, ids)
        hits = searcher.search(query, len(ids), count=False).hits
        result: dict[str, bytes] = {}
        for _, address in hits:
            raw = searcher.doc(address)
            result[_id_of(raw)] = bytes(raw.get_first(FIELD_FINGERPRINT) or b"")
        return result

    def count(self) -> int:
        return self._index.searcher().num_docs

    def health(self) -> Health:
        try:
            count = self.count()
        except Exception as exc:  # noqa: BLE001 - health must report, not raise
            return Health(False, self.name, str(self.path), detail=str(exc))
        return Health(True, self.name, str(self.path), count=count, version=self.version())

    def reload(self) -> None:
        """Make this process see the latest commit now (readers also reload on their own shortly after)."""
        self._index.reload()

    def index_documents(self, documents: Iterable[Document], progress: ProgressCallback | None = None) -> IndexReport:
        """Upsert in chunks: skip unchanged ids, replace changed ones; commit once, only if anything changed.

        A single commit at the end means readers never see a half-built index.
        """
        report = IndexReport(index=str(self.path))
        with self._write_lock:
            self._index.reload()
            searcher = self._index.searcher()
            had_documents = searcher.num_docs > 0
            writer = self._index.writer(heap_size=self._writer_heap, num_threads=1)
            try:
                for chunk in _chunks(documents, _CHUNK):
                    existing = self._fingerprints(searcher, [d.id for d in chunk]) if had_documents else {}
                    for doc in chunk:
                        digest = fingerprint(doc)
                        previous = existing.get(doc.id)
                        if previous == digest:
                            report.unchanged += 1
                            continue
                        writer.delete_documents_by_term(FIELD_ID, doc.id)
                        writer.add_document(self._to_tantivy(doc, digest))
                        if previous is None:
                            report.added += 1
                        else:
                            report.updated += 1
                    if progress is not None:
                        progress(len(chunk))
                if report.written:
                    writer.commit()
                    writer.wait_merging_threads()
                else:
                    writer.rollback()
            except BaseException:
                writer.rollback()
                raise
            finally:
                del writer
            self._index.reload()
        return report

    @staticmethod
    def _to_tantivy(doc: Document, digest: bytes) -> tantivy.Document:
        out = tantivy.Document()
        out.add_text(FIELD_ID, doc.id)
        out.add_text(FIELD_CONTENTS, doc.contents)
        out.add_bytes(FIELD_TITLE, doc.title.encode("utf-8"))
        out.add_bytes(FIELD_TEXT, doc.text.encode("utf-8"))
        out.add_bytes(FIELD_FINGERPRINT, digest)
        return out
