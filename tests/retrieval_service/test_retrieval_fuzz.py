"""Property-based fuzzing of the HTTP API on a real server process: whatever arrives, no 5xx, no hang, and
every rejection is a 4xx whose body names the offending field."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval_service.local_server import ServerProcess

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
QUERY = st.text(max_size=1200) | JSON
COUNT = st.integers(-10, 10_000) | JSON
BODIES = {
    "/search": st.fixed_dictionaries({"query": QUERY}, optional={"k": COUNT, "extra": JSON}) | JSON,
    "/search/batch": st.fixed_dictionaries(
        {"queries": st.lists(QUERY, max_size=300) | JSON}, optional={"k": COUNT, "extra": JSON}
    )
    | JSON,
    "/documents/mget": st.fixed_dictionaries({"ids": st.lists(st.text(max_size=600) | JSON, max_size=300) | JSON})
    | JSON,
}
FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def assert_handled(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert body["detail"] and all(isinstance(d["field"], str) and d["field"] for d in body["detail"]), body


@pytest.fixture(scope="module")
def http(server: ServerProcess):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:  # a hang fails the example
        yield client


@pytest.mark.parametrize("path", sorted(BODIES))
def test_json_bodies(http: httpx.Client, path: str) -> None:
    @FUZZ
    @given(body=BODIES[path])
    def run(body: object) -> None:
        assert_handled(http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"}))

    run()


@FUZZ
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_raw_bytes(http: httpx.Client, raw: bytes, content_type: str) -> None:
    for path in BODIES:
        assert_handled(http.post(path, content=raw, headers={"Content-Type": content_type} if content_type else {}))


@FUZZ
@given(doc_id=st.text(max_size=700))
def test_document_ids(http: httpx.Client, doc_id: str) -> None:
    response = http.get(f"/documents/{quote(doc_id, safe='')}")
    assert_handled(response)
