"""The service or its Elasticsearch down, the service restarted under load, and the serve-time guards."""

from __future__ import annotations

import hmac
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import retrieval_service.app as app_module
from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_service.cli import main as cli_main
from retrieval_service.client import RetrievalClient, RetrievalError
from retrieval_service.local_server import ServerProcess, free_port
from retrieval_service.settings import ServiceSettings


def test_dead_service_fails_after_bounded_retries_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RetrievalClient(url, timeout=2.0, retries=2, backoff=0.05) as client, pytest.raises(RetrievalError) as info:
        client.search_batch(["river"])
    assert f"retrieval service {url} unreachable: POST /search/batch failed 3 time(s)" in str(info.value)


def test_elasticsearch_down_is_a_503_naming_elasticsearch(tmp_path: Path) -> None:
    """The service runs, its Elasticsearch does not: bounded retries inside the service, then a 503 that names
    the cluster's URL; the client retries that too, then raises naming both."""
    es_url = f"http://127.0.0.1:{free_port()}"
    env = {"ELASTICSEARCH_URL": es_url, "RETRIEVAL_ES_MAX_RETRIES": "1", "RETRIEVAL_ES_TIMEOUT": "2"}
    proc = ServerProcess(["--backend", "elasticsearch", "--allow-missing-index"], env=env, workers=1).wait_live()
    try:
        with RetrievalClient(proc.url, retries=1, backoff=0.05) as client, pytest.raises(RetrievalError) as info:
            client.search("river")
        message = str(info.value)
        assert info.value.status == 503 and f"retrieval service {proc.url}" in message and es_url in message
    finally:
        proc.stop()


def test_restart_under_load_loses_no_answered_request(corpus_index: Path) -> None:
    """Three clients query while the service is stopped (SIGTERM) and started again on the same port: every
    answer the client returned is the full, right answer, and the retries carry every call over the gap."""
    queries = [f"river {w}" for w in ("ocean", "tiger", "piano", "comet", "gene", "tower")]
    with TantivyBackend(corpus_index) as backend:
        expected = {q: [h.id for h in backend.search(q, 5)] for q in queries}
    port = free_port()
    server = ServerProcess(["--index", str(corpus_index)], workers=1, port=port).wait_live()
    answers: list[tuple[str, list[str]]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with RetrievalClient(server.url, timeout=10.0, retries=8, backoff=0.1) as client:
            for i in range(400):  # bounded: the loop ends by itself
                if stop.is_set():
                    return
                query = queries[i % len(queries)]
                try:
                    answers.append((query, [h.id for h in client.search(query, 5)]))
                except RetrievalError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        before = len(answers)
        server.stop()
        server = ServerProcess(["--index", str(corpus_index)], workers=1, port=port).wait_live()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        server.stop()
    assert before > 0 and len(answers) > before  # traffic before and after the restart
    assert not errors, errors[:3]
    assert all(ids == expected[query] for query, ids in answers)


def test_serve_refuses_open_address_without_token(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("RETRIEVAL_API_TOKEN", raising=False)
    monkeypatch.delenv("RETRIEVAL_API_TOKEN_FILE", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--allow-missing-index"]) == 2
    assert "--host 0.0.0.0 is reachable from other machines and no bearer token is set" in capsys.readouterr().err


def test_bearer_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", recording_compare)
    app = app_module.create_app(settings=ServiceSettings(index=str(tmp_path / "none"), token="t0ken"))
    with TestClient(app) as client:
        response = client.post("/search", json={"query": "x"}, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == httpx.codes.UNAUTHORIZED and compared == [(b"wrong", b"t0ken")]
