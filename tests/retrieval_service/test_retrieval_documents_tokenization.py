"""JSONL parsing errors name file, line and field; the tokenization contract holds across implementations."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from retrieval_service.backends.elasticsearch_backend import ElasticsearchSettings, index_body
from retrieval_service.backends.tantivy_backend import TantivyBackend
from retrieval_service.documents import Document, MalformedLineError, iter_passages, parse_passage
from retrieval_service.tokenization import ES_TOKEN_PATTERN, reference_tokenize, tokenize


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"title": "t", "text": "x"}', "missing field 'id'"),
        ('{"id": 5, "title": "t", "text": "x"}', "field 'id' must be a string, got int"),
        ('{"id": " ", "title": "t", "text": "x"}', "field 'id' is empty"),
        ('{"id": "a", "title": "", "text": " "}', "fields 'title' and 'text' are both empty"),
        ('{"id": "a", "title": "t"}', "missing field 'text'"),
    ],
)
def test_parse_passage_names_line_and_field(line: str, reason: str) -> None:
    with pytest.raises(MalformedLineError) as info:
        parse_passage(line, "in.jsonl", 12)
    assert str(info.value).startswith("in.jsonl:12: ")
    assert reason in str(info.value)


def test_iter_passages_reads_gzip_by_magic_and_collects_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.data"  # no .gz suffix on purpose
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"id": "a", "title": "A", "text": "x"}\n\n{broken\n{"id": "b", "title": "B", "text": "y"}\n')
    errors: list[MalformedLineError] = []
    docs = list(iter_passages(path, errors=errors))
    assert [d.id for d in docs] == ["a", "b"]
    assert [e.line_number for e in errors] == [3]
    with pytest.raises(MalformedLineError, match=r"p\.data:3: invalid JSON"):
        list(iter_passages(path))


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
