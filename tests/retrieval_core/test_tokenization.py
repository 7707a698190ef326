"""The tokenization contract holds across implementations: tantivy, the pure-Python reading, Elasticsearch's mapping."""

from __future__ import annotations

import itertools
from pathlib import Path

from retrieval_core.backends.elasticsearch_backend import ElasticsearchSettings, index_body
from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_core.documents import Document, iter_passages
from retrieval_core.tokenization import ES_TOKEN_PATTERN, reference_tokenize, tokenize


def test_tokenize_follows_contract() -> None:
    text = "Hello, WORLD! don't C++ 3.14 naïve ΟΔΟΣ " + "x" * 39 + " " + "y" * 40
    assert tokenize(text) == ["hello", "world", "don", "t", "c", "3", "14", "naïve", "οδοσ", "x" * 39]
    assert reference_tokenize(text) == tokenize(text)


def test_reference_tokenizer_matches_tantivy_on_latin_corpus(corpus: list[dict[str, str]]) -> None:
    for row in corpus:
        doc = Document(**row)
        assert reference_tokenize(doc.contents) == tokenize(doc.contents)


def test_reference_tokenizer_matches_tantivy_on_wikipedia(wiki_path: Path) -> None:
    """The pure-Python reading agrees on Latin-script passages; the rest use combining marks (documented)."""
    docs = list(itertools.islice(iter_passages(wiki_path), 3000))
    mismatched = [d.id for d in docs if reference_tokenize(d.contents) != tokenize(d.contents)]
    assert len(mismatched) <= len(docs) * 0.002, mismatched


def test_index_uses_the_query_tokenizer(tmp_path: Path) -> None:
    """Every query token of a document finds that document: index and query analysis agree."""
    doc = Document("x", "Straße-Naïve", "C++ don't 3.14 ΟΔΟΣ MiXeD")
    with TantivyBackend(tmp_path / "i", create=True) as backend:
        backend.index_documents([doc])
        for token in tokenize(doc.contents):
            assert [h.id for h in backend.search(token, 1)] == ["x"], token


def test_elasticsearch_mapping_states_the_contract() -> None:
    body = index_body(ElasticsearchSettings())
    analysis = body["settings"]["analysis"]
    assert analysis["tokenizer"]["kard_split"] == {"type": "pattern", "pattern": ES_TOKEN_PATTERN}
    assert ES_TOKEN_PATTERN == r"[^\p{IsAlphabetic}\p{N}]+"
    assert analysis["analyzer"]["kard_text"]["filter"] == ["kard_max_len", "lowercase"]
    assert analysis["filter"]["kard_max_len"]["max"] == 39
    assert body["settings"]["similarity"]["default"] == {"type": "BM25", "k1": 1.2, "b": 0.75}
    assert body["mappings"]["properties"]["contents"]["analyzer"] == "kard_text"
    assert body["mappings"]["dynamic"] == "strict"
