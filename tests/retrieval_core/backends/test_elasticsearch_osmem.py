"""API-contract tests of the Elasticsearch backend against osmem-server.

No Elasticsearch server can be installed here, so these run against osmem-server (an in-memory
OpenSearch-compatible emulator) started on an ephemeral 127.0.0.1 port: a stand-in for the real
cluster, used for requests, bulk errors, msearch, mget and the alias swap only. Its ranking is not
BM25 and it cannot search through a custom analyzer, so these tests use ``analyzer="standard"`` and
never assert scores or order; ranking against real Elasticsearch is in test_elasticsearch_real.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

osmem_server = pytest.importorskip("osmem_server", reason="osmem-server (requirements-dev.txt) not installed")

from retrieval_core.backends import BackendError  # noqa: E402
from retrieval_core.backends.elasticsearch_backend import (  # noqa: E402
    ElasticsearchBackend,
    ElasticsearchSettings,
)
from retrieval_core.documents import Document  # noqa: E402
from retrieval_core.tokenization import tokenize  # noqa: E402
from retrieval_service.local_server import ServerProcess, free_port  # noqa: E402

_counter = itertools.count()
# osmem is RE2-based: Java's \p{IsAlphabetic} does not parse there; \p{L}\p{N} is the closest RE2 class.
RE2_PATTERN = r"[^\p{L}\p{N}]+"


@pytest.fixture(scope="module")
def osmem() -> Iterator[osmem_server.OsmemServer]:
    server = osmem_server.OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    assert server.url.startswith("http://127.0.0.1:")
    yield server
    server.close()


def settings_for(url: str, **overrides: object) -> ElasticsearchSettings:
    values: dict[str, object] = {
        "hosts": (url,),
        "alias": f"kard-test-{next(_counter)}",
        "plain_json": True,  # osmem rejects the 9.x compatibility mime type
        "analyzer": "standard",
        "token_pattern": RE2_PATTERN,
        "max_retries": 1,
        "backoff_initial": 0.01,
        "bulk_chunk": 50,
    }
    values.update(overrides)
    return ElasticsearchSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def backend(osmem: osmem_server.OsmemServer) -> Iterator[ElasticsearchBackend]:
    with ElasticsearchBackend(settings_for(osmem.url)) as b:
        yield b


def docs(n: int, prefix: str = "d", word: str = "common") -> list[Document]:
    return [Document(f"{prefix}{i}", f"Title {i}", f"{word} passage unique{prefix}{i}") for i in range(n)]


def test_index_search_msearch_mget_count(backend: ElasticsearchBackend) -> None:
    assert not backend.health().ok and "does not exist" in backend.health().detail
    report = backend.index_documents(docs(120))
    assert (report.added, report.failed) == (120, 0)
    assert backend.count() == 120
    versions = backend.versions()
    assert len(versions) == 1 and versions[0].startswith(f"{backend.alias}-v")
    body = backend.es.indices.get(index=versions[0]).body[versions[0]]
    assert body["settings"]["index"]["similarity"]["default"]["k1"] in ("1.2", 1.2)
    assert body["settings"]["index"]["refresh_interval"] == "1s"  # restored after the bulk load
    assert body["mappings"]["dynamic"] == "strict"

    hits = backend.search("uniqued7", 5)
    assert hits[0].id == "d7" and hits[0].title == "Title 7" and hits[0].score > 0
    assert backend.search("?!", 5) == []
    batch = backend.search_batch(["uniqued1", "...", "uniqued2", "common"], 3)
    assert batch[0][0].id == "d1" and batch[1] == [] and batch[2][0].id == "d2" and len(batch[3]) == 3
    found = backend.get(["d3", "nope", "d4"])
    assert set(found) == {"d3", "d4"} and found["d3"] == Document("d3", "Title 3", "common passage uniqued3")
    health = backend.health()
    assert health.ok and health.count == 120


def test_in_place_update_is_idempotent(backend: ElasticsearchBackend) -> None:
    backend.index_documents(docs(30))
    version = backend.versions()
    again = backend.index_documents(docs(30))
    assert (again.added, again.updated, again.unchanged) == (0, 0, 30)
    changed = [
        Document("d2", "Title 2", "rewritten"),
        Document("d2", "Title 2", "rewritten twice"),
        Document("new", "N", "fresh"),
    ]
    third = backend.index_documents(changed)
    assert (third.added, third.updated) == (1, 2)
    assert backend.versions() == version  # in place: same concrete index
    assert backend.get(["d2"])["d2"].text == "rewritten twice" and backend.count() == 31


def test_rebuild_swaps_alias_atomically(backend: ElasticsearchBackend) -> None:
    """During a rebuild the alias keeps serving the old index; afterwards it points at the new one only."""
    backend.index_documents(docs(40, word="old"))
    old = backend.versions()
    seen_counts: list[int] = []

    def during(_: int) -> None:
        seen_counts.append(backend.count())
        assert backend.versions() == old
        assert backend.search("old", 1) != []

    report = backend.index_documents(docs(60, prefix="n", word="new"), progress=during, rebuild=True)
    assert report.added == 60 and seen_counts == [40, 40]
    new = backend.versions()
    assert len(new) == 1 and new != old
    assert backend.count() == 60 and backend.search("old", 3) == []
    assert not backend.es.indices.exists(index=old[0])  # replaced version deleted


def test_rebuild_keep_old_and_manual_rollback(backend: ElasticsearchBackend) -> None:
    backend.index_documents(docs(5))
    old = backend.versions()[0]
    backend.index_documents(docs(7), rebuild=True, delete_old=False)
    assert backend.es.indices.exists(index=old)
    newer = backend.versions()
    assert backend.swap_alias(old, delete_old=False) == newer
    assert backend.versions() == [old] and backend.count() == 5


def test_bulk_reports_per_document_errors(backend: ElasticsearchBackend) -> None:
    backend.index_documents(docs(3))
    index = backend.versions()[0]
    backend.es.indices.put_settings(index=index, settings={"index": {"blocks": {"write": True}}})
    report = backend.index_documents([Document("b1", "B", "blocked"), Document("b2", "B", "blocked too")])
    assert report.failed == 2 and report.written == 0
    assert report.errors[0].startswith("document 'b1': status 403: cluster_block_exception")
    backend.es.indices.put_settings(index=index, settings={"index": {"blocks": {"write": False}}})


def test_failed_rebuild_is_abandoned_and_alias_kept(osmem: osmem_server.OsmemServer) -> None:
    """A strict mapping that rejects documents makes the rebuild fail; the alias is untouched."""
    with ElasticsearchBackend(settings_for(osmem.url)) as backend:
        backend.index_documents(docs(4))
        old = backend.versions()
        original = backend.create_version

        def create_blocked() -> str:
            name = original()
            backend.es.indices.put_settings(index=name, settings={"index": {"blocks": {"write": True}}})
            return name

        backend.create_version = create_blocked  # type: ignore[method-assign]
        with pytest.raises(BackendError, match="rebuild of .* abandoned: 6 documents failed"):
            backend.index_documents(docs(6, prefix="x"), rebuild=True)
        assert backend.versions() == old and backend.count() == 4
        leftovers = [n for n in backend.es.indices.get(index=f"{backend.alias}-v*").body if n not in old]
        assert leftovers == []


def test_contract_analyzer_is_accepted_and_tokenizes_like_tantivy(osmem: osmem_server.OsmemServer) -> None:
    """The contract analyzer (with osmem's RE2 stand-in for the Java pattern) via the _analyze API."""
    with ElasticsearchBackend(settings_for(osmem.url, analyzer="kard_text")) as backend:
        index = backend.create_version()
        text = "Hello, WORLD! don't C++ 3.14 naïve " + "x" * 39 + " " + "y" * 40
        tokens = backend.es.indices.analyze(index=index, analyzer="kard_text", text=text).body["tokens"]
        assert [t["token"] for t in tokens] == tokenize(text)


def test_retries_with_backoff_then_clear_error() -> None:
    """A cluster that is down: connection refused on a free loopback port, retried, then BackendError."""
    settings = ElasticsearchSettings(
        hosts=(f"http://127.0.0.1:{free_port()}",), max_retries=2, backoff_initial=0.01, request_timeout=1.0
    )
    with ElasticsearchBackend(settings) as backend:
        with pytest.raises(BackendError, match="failed after 3 attempts"):
            backend.search("river", 3)
        assert not backend.health().ok


def test_settings_from_env_reads_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2\n", encoding="utf-8")
    monkeypatch.setenv("ELASTICSEARCH_URL", "https://es1:9200, https://es2:9200")
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "kard")
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("ELASTICSEARCH_VERIFY_CERTS", "false")
    monkeypatch.setenv("RETRIEVAL_ES_TIMEOUT", "2.5")
    settings = ElasticsearchSettings.from_env(alias="a")
    assert settings.hosts == ("https://es1:9200", "https://es2:9200")
    assert (settings.username, settings.password, settings.verify_certs) == ("kard", "hunter2", False)
    assert settings.request_timeout == 2.5
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="ELASTICSEARCH_PASSWORD_FILE=.*cannot read secret file"):
        ElasticsearchSettings.from_env()
    monkeypatch.delenv("ELASTICSEARCH_URL")
    with pytest.raises(ValueError, match="ELASTICSEARCH_URL is not set"):
        ElasticsearchSettings.from_env()


def test_service_process_on_elasticsearch_backend(osmem: osmem_server.OsmemServer) -> None:
    """``serve --backend elasticsearch`` configured only through the environment, as on a cluster."""
    settings = settings_for(osmem.url)
    with ElasticsearchBackend(settings) as backend:
        backend.index_documents(docs(20))
    env = {
        "ELASTICSEARCH_URL": osmem.url,
        "RETRIEVAL_ES_PLAIN_JSON": "true",
        "RETRIEVAL_ES_ANALYZER": "standard",
    }
    proc = ServerProcess(["--backend", "elasticsearch", "--index", settings.alias], env=env, workers=2).wait_live()
    try:
        assert httpx.get(f"{proc.url}/readyz").json()["count"] == 20
        r = httpx.post(f"{proc.url}/search/batch", json={"queries": ["uniqued5", "uniqued6"], "k": 1})
        assert [b[0]["id"] for b in r.json()["results"]] == ["d5", "d6"]
        assert httpx.get(f"{proc.url}/documents/d9").json()["title"] == "Title 9"
        assert httpx.get(f"{proc.url}/documents/zzz").status_code == 404
    finally:
        proc.stop()


def test_score_and_version_requests(backend: ElasticsearchBackend) -> None:
    """Contract only: osmem's scores are not BM25, so only which ids come back (and as floats) is checked."""
    backend.index_documents(docs(20))
    first = backend.version()
    assert first.startswith("elasticsearch-") and backend.health().version == first
    scores = backend.score("common passage", ["d1", "d2", "missing"])
    assert set(scores) == {"d1", "d2"} and all(isinstance(v, float) for v in scores.values())
    batch = backend.score_batch(["uniqued3", "common"], [["d3", "d4"], []])
    assert set(batch[0]) == {"d3", "d4"} and batch[1] == {}
    backend.index_documents(docs(21))
    assert backend.version() != first  # the count changed


def test_kard_knowledge_stage_in_elasticsearch_mode(
    osmem: osmem_server.OsmemServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Contract only: the knowledge build's searches, scores and fetches as Elasticsearch requests (msearch,
    ids-filtered msearch, mget) against the emulator; its ranking is not BM25, so no recall is asserted."""
    from trainer.config.loader import load_config
    from trainer.data.synthetic_kb import SyntheticKBSpec, generate_synthetic_kb_task
    from trainer.kard.knowledge import KnowledgeBase
    from trainer.kard.prepare import prepare_knowledge

    settings = settings_for(osmem.url)
    passages = generate_synthetic_kb_task(SyntheticKBSpec(seed=0)).passages
    with ElasticsearchBackend(settings) as backend:
        backend.index_documents(Document(**p) for p in passages)
    for name, value in {"RETRIEVAL_ES_PLAIN_JSON": "true", "RETRIEVAL_ES_ANALYZER": "standard",
                        "RETRIEVAL_ES_TOKEN_PATTERN": RE2_PATTERN}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    cfg = load_config(
        overrides=[
            "data.dataset=synthetic_kb", "data.max_train_examples=30", "data.max_dev_examples=6",
            "retrieval.mode=elasticsearch", f"retrieval.url={osmem.url}", f"retrieval.index={settings.alias}",
            "method.name=kard", "method.kard.candidates=5", "method.reranker.candidates_per_query=4",
            f"run.output_dir={tmp_path}",
        ]
    )  # fmt: skip
    build = prepare_knowledge(cfg)
    knowledge = KnowledgeBase(build.path)
    assert build.manifest["request"]["retriever_version"].startswith(f"elasticsearch-{settings.alias}-v")
    assert len(knowledge.dev) == 6 and sum(len(r) for r in knowledge.train.values()) == 60
    row = next(iter(knowledge.train.values()))[0]
    assert row.passage_ids and set(row.passage_ids) <= set(row.candidate_ids) <= set(knowledge.passages)
    assert all(isinstance(v, float) for v in row.candidate_rho)
    assert prepare_knowledge(cfg).reused
