"""The service as a real uvicorn process on 127.0.0.1: every endpoint, every bad input, auth, load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_core.documents import Document, ScoredDocument
from retrieval_service.client import RetrievalClient, RetrievalError
from retrieval_service.local_server import ServerProcess, free_port


def fields(response: httpx.Response) -> list[str]:
    return [d["field"] for d in response.json()["detail"]]


def test_search_batch_documents_health_openapi(server: ServerProcess, corpus_index: Path) -> None:
    with TantivyBackend(corpus_index) as backend:
        expected = backend.search("river ocean", 5)
    r = httpx.post(f"{server.url}/search", json={"query": "river ocean", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert [h["id"] for h in body["results"]] == [h.id for h in expected]
    assert body["results"][0]["score"] == pytest.approx(expected[0].score)
    assert body["took_ms"] >= 0

    r = httpx.post(f"{server.url}/search/batch", json={"queries": ["river ocean", "!!!", "tiger"], "k": 2})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3 and results[1] == [] and len(results[2]) == 2
    assert [h["id"] for h in results[0]] == [h.id for h in expected[:2]]

    r = httpx.get(f"{server.url}/documents/doc-7")
    assert r.status_code == 200 and r.json()["id"] == "doc-7"
    r = httpx.post(f"{server.url}/documents/mget", json={"ids": ["doc-1", "nope", "doc-2"]})
    assert [d["id"] for d in r.json()["documents"]] == ["doc-1", "doc-2"] and r.json()["missing"] == ["nope"]

    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ok"] and ready.json()["count"] == 400
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/search", "/search/batch", "/score", "/score/batch", "/documents/{doc_id}", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )
    ids = [h.id for h in expected] + ["nope"]
    r = httpx.post(f"{server.url}/score", json={"query": "river ocean", "ids": ids})
    assert r.status_code == 200 and set(r.json()["scores"]) == set(ids[:-1])
    assert r.json()["scores"][expected[0].id] == pytest.approx(expected[0].score)
    r = httpx.post(f"{server.url}/score/batch", json={"items": [{"query": "river", "ids": ids[:2]}]})
    assert r.status_code == 200 and len(r.json()["scores"]) == 1
    assert ready.json()["version"].startswith("tantivy-")
    assert httpx.get(f"{server.url}/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/search", {"query": "", "k": 3}, "query"),
        ("/search", {"query": "   ", "k": 3}, "query"),
        ("/search", {"query": "x" * 1025}, "query"),
        ("/search", {"query": "river", "k": 0}, "k"),
        ("/search", {"query": "river", "k": 101}, "k"),
        ("/search", {"query": "river", "k": "many"}, "k"),
        ("/search", {"k": 3}, "query"),
        ("/search", {"query": "river", "top_k": 3}, "top_k"),
        ("/search", [1, 2], "body"),
        ("/search/batch", {"queries": []}, "queries"),
        ("/search/batch", {"queries": ["ok"] * 257}, "queries"),
        ("/search/batch", {"queries": ["ok", ""]}, "queries.1"),
        ("/search/batch", {"queries": "river"}, "queries"),
        ("/documents/mget", {"ids": []}, "ids"),
        ("/score", {"query": "river", "ids": []}, "ids"),
        ("/score", {"query": "", "ids": ["doc-1"]}, "query"),
        ("/score/batch", {"items": []}, "items"),
        ("/score/batch", {"items": [{"query": "river"}]}, "items.0.ids"),
    ],
)
def test_bad_input_is_422_naming_the_field(server: ServerProcess, path: str, payload: object, field: str) -> None:
    r = httpx.post(f"{server.url}{path}", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"
    assert field in fields(r), r.text


def test_malformed_json_missing_body_and_unknown_id(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/search", content=b'{"query": "riv', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_json" and fields(r) == ["body"]
    r = httpx.post(f"{server.url}/search")
    assert r.status_code == 422 and "request body is required" in r.json()["detail"][0]["message"]
    r = httpx.get(f"{server.url}/documents/no-such-id")
    assert r.status_code == 404 and r.json() == {
        "error": "not_found",
        "detail": [{"field": "id", "message": "no document with id 'no-such-id'"}],
    }


def test_bearer_token_and_configured_limits(auth_server: ServerProcess) -> None:
    url = auth_server.url
    r = httpx.post(f"{url}/search", json={"query": "river"})
    assert r.status_code == 401 and fields(r) == ["Authorization"] and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{url}/search", json={"query": "river"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "invalid bearer token" in r.text
    assert httpx.get(f"{url}/documents/doc-1").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open
    assert httpx.get(f"{url}/readyz").status_code == 200
    auth = {"Authorization": "Bearer s3cret-token"}
    assert httpx.post(f"{url}/search", json={"query": "river", "k": 5}, headers=auth).status_code == 200
    assert fields(httpx.post(f"{url}/search", json={"query": "river", "k": 6}, headers=auth)) == ["k"]
    assert fields(httpx.post(f"{url}/search", json={"query": "r" * 51}, headers=auth)) == ["query"]
    assert fields(httpx.post(f"{url}/search/batch", json={"queries": ["a"] * 4}, headers=auth)) == ["queries"]
    with RetrievalClient(url, token="s3cret-token", batch_size=3) as client:
        assert len(client.search_batch(["river"] * 7, k=2)) == 7  # split into 3 requests under the limit
    with RetrievalClient(url, retries=3) as client, pytest.raises(RetrievalError) as info:
        client.search("river")
    assert info.value.status == 401 and "Authorization" in str(info.value)


def test_client_roundtrip(server: ServerProcess, corpus: list[dict[str, str]]) -> None:
    with RetrievalClient(server.url, timeout=5.0, batch_size=2) as client:
        hits = client.search("river ocean", k=3)
        assert len(hits) == 3 and all(isinstance(h, ScoredDocument) for h in hits)
        with pytest.raises(AttributeError):
            hits[0].score = 1.0  # type: ignore[misc]  # frozen
        batch = client.search_batch(["river ocean", "tiger", "!!", "lion"], k=3)
        assert batch[0] == hits and batch[2] == [] and len(batch) == 4
        assert client.get(["doc-3", "missing", "doc-4"]) == [
            Document(**corpus[3]),
            None,
            Document(**corpus[4]),
        ]
        assert client.health()["count"] == 400
        assert client.version() == client.health()["version"]
        assert client.score("river ocean", [h.id for h in hits]) == {h.id: pytest.approx(h.score) for h in hits}
        assert client.score_batch(["river", "lion", "tiger"], [[hits[0].id]] * 3) == [
            client.score(q, [hits[0].id]) for q in ("river", "lion", "tiger")
        ]  # 2 requests (batch_size=2)
        with pytest.raises(RetrievalError) as info:
            client.search("", k=3)
        assert info.value.status == 422 and "query" in str(info.value)


def test_client_gives_up_after_retries_on_dead_port() -> None:
    start = time.monotonic()
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        RetrievalClient(dead, timeout=1.0, retries=2, backoff=0.05) as client,
        pytest.raises(RetrievalError, match="ConnectError"),
    ):
        client.search("river")
    assert time.monotonic() - start < 5


def test_client_retries_until_index_appears(tmp_path: Path) -> None:
    """503 while the index is missing is retried with backoff; the call succeeds once it is built."""
    index = tmp_path / "late"
    proc = ServerProcess(["--index", str(index), "--allow-missing-index"], workers=1).wait_live()
    try:
        assert httpx.get(f"{proc.url}/readyz").status_code == 503
        with RetrievalClient(proc.url, retries=0) as client, pytest.raises(RetrievalError) as info:
            client.search("zebra")
        assert info.value.status == 503

        def build() -> None:
            time.sleep(0.5)
            with TantivyBackend(index, create=True) as backend:
                backend.index_documents([Document("z", "Zebra", "a striped zebra")])

        builder = threading.Thread(target=build)
        builder.start()
        with RetrievalClient(proc.url, retries=8, backoff=0.3) as client:
            assert [h.id for h in client.search("zebra")] == ["z"]
        builder.join()
    finally:
        proc.stop()


def test_running_service_sees_new_commits(tmp_path: Path) -> None:
    """An indexer run in another process becomes visible to serving workers without a restart."""
    index = tmp_path / "live"
    with TantivyBackend(index, create=True) as backend:
        backend.index_documents([Document("a", "Alpha", "first passage")])
    proc = ServerProcess(["--index", str(index)], workers=2).wait_live()
    try:
        assert httpx.get(f"{proc.url}/documents/b").status_code == 404
        with TantivyBackend(index) as backend:
            backend.index_documents([Document("b", "Beta", "second passage about quokkas")])
        deadline = time.monotonic() + 10
        seen = 0
        while time.monotonic() < deadline and seen < 4:  # both workers, several connections
            r = httpx.post(f"{proc.url}/search", json={"query": "quokkas"})
            seen = seen + 1 if [h["id"] for h in r.json()["results"]] == ["b"] else 0
            time.sleep(0.05 if seen else 0.2)
        assert seen == 4
        assert httpx.get(f"{proc.url}/readyz").json()["count"] == 2
    finally:
        proc.stop()


def test_keep_alive_latency_has_no_nagle_stall(server: ServerProcess) -> None:
    """Regression: with 2 workers every keep-alive response used to wait ~40 ms (Nagle + delayed ACK)."""
    with httpx.Client(base_url=server.url) as http:
        http.get("/healthz")
        latencies = []
        for _ in range(30):
            start = time.perf_counter()
            http.post("/search", json={"query": "river", "k": 3}).raise_for_status()
            latencies.append(time.perf_counter() - start)
    assert sorted(latencies)[len(latencies) // 2] < 0.025


@pytest.mark.timeout(120)
def test_bounded_concurrency_no_errors_no_lost_responses(server: ServerProcess) -> None:
    """16 clients x 100 requests on loopback; every response is the right one."""
    words = ["river", "ocean", "tiger", "lion", "piano", "galaxy", "enzyme", "castle"]
    with RetrievalClient(server.url) as probe:
        expected = {w: [h.id for h in probe.search(w, k=3)] for w in words}

    def worker(n: int) -> list[tuple[str, list[str]]]:
        out = []
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            for i in range(100):
                word = words[(n + i) % len(words)]
                r = http.post("/search", json={"query": word, "k": 3})
                r.raise_for_status()
                out.append((word, [h["id"] for h in r.json()["results"]]))
        return out

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = [item for chunk in pool.map(worker, range(16)) for item in chunk]
    elapsed = time.monotonic() - start
    assert len(results) == 1600
    assert all(ids == expected[word] for word, ids in results)
    assert elapsed < 100
