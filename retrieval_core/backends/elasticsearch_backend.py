"""Elasticsearch backend for clusters: versioned indices behind an alias, bulk indexing, msearch batches.

Writes go to a new versioned index (``<alias>-v<timestamp>``) and the alias is moved in one atomic
``_aliases`` call, so a running service never reads a half-built index.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TypeVar

import elasticsearch
from elastic_transport import ApiResponse, HttpHeaders, Urllib3HttpNode
from elasticsearch import Elasticsearch, helpers

from retrieval_core.backends import DEFAULT_ES_ALIAS
from retrieval_core.backends.base import (
    BM25_B,
    BM25_K1,
    BackendError,
    Health,
    IndexReport,
    ProgressCallback,
    SearchBackend,
)
from retrieval_core.credentials import read_secret
from retrieval_core.documents import Document, ScoredDocument
from retrieval_core.tokenization import ES_ANALYZER, ES_TOKEN_PATTERN, elasticsearch_analysis, tokenize

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_COMPAT_RE = re.compile(r"application/vnd\.elasticsearch\+([a-z-]+)(\s*;\s*compatible-with=\d+)?")
_SOURCE_FIELDS = ["id", "title", "text"]


class PlainJsonNode(Urllib3HttpNode):
    """Sends ``application/json`` instead of the 9.x compatibility mime type.

    For OpenSearch-compatible servers (and the osmem-server test emulator) that reject
    ``application/vnd.elasticsearch+json; compatible-with=9``. Not needed for real Elasticsearch.
    """

    def perform_request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: Any = None,
    ) -> Any:
        if headers is not None:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                value = headers.get(name)
                if value:
                    headers[name] = _COMPAT_RE.sub(r"application/\1", value)
        return super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")


def _env_number(name: str, default: float, cast: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return cast(str(default))
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None


@dataclass(frozen=True)
class ElasticsearchSettings:
    """Connection and index settings; secrets may come from ``*_FILE`` paths (mounted secrets)."""

    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    alias: str = DEFAULT_ES_ALIAS
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    request_timeout: float = 10.0
    max_retries: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    bulk_chunk: int = 500
    number_of_shards: int = 1
    number_of_replicas: int = 1
    plain_json: bool = False
    token_pattern: str = ES_TOKEN_PATTERN
    analyzer: str = ES_ANALYZER

    @classmethod
    def from_env(cls, alias: str | None = None, hosts: str | None = None) -> ElasticsearchSettings:
        url = hosts or os.environ.get("ELASTICSEARCH_URL")
        if not url:
            raise ValueError("ELASTICSEARCH_URL is not set (comma-separated URLs, e.g. https://es:9200)")
        return cls(
            hosts=tuple(h.strip() for h in url.split(",") if h.strip()),
            alias=alias or os.environ.get("RETRIEVAL_INDEX", DEFAULT_ES_ALIAS),
            api_key=read_secret("ELASTICSEARCH_API_KEY", "ELASTICSEARCH_API_KEY_FILE"),
            username=os.environ.get("ELASTICSEARCH_USERNAME") or None,
            password=read_secret("ELASTICSEARCH_PASSWORD", "ELASTICSEARCH_PASSWORD_FILE"),
            ca_certs=os.environ.get("ELASTICSEARCH_CA_CERTS") or None,
            verify_certs=_env_bool("ELASTICSEARCH_VERIFY_CERTS", True),
            client_cert=os.environ.get("ELASTICSEARCH_CLIENT_CERT") or None,
            client_key=os.environ.get("ELASTICSEARCH_CLIENT_KEY") or None,
            request_timeout=_env_number("RETRIEVAL_ES_TIMEOUT", 10.0, float),
            max_retries=_env_number("RETRIEVAL_ES_MAX_RETRIES", 3, int),
            number_of_shards=_env_number("RETRIEVAL_ES_SHARDS", 1, int),
            number_of_replicas=_env_number("RETRIEVAL_ES_REPLICAS", 1, int),
            plain_json=_env_bool("RETRIEVAL_ES_PLAIN_JSON", False),
            token_pattern=os.environ.get("RETRIEVAL_ES_TOKEN_PATTERN") or ES_TOKEN_PATTERN,
            analyzer=os.environ.get("RETRIEVAL_ES_ANALYZER") or ES_ANALYZER,
        )

    def client(self) -> Elasticsearch:
        """Build the client; retries are done here with backoff, so the transport's own are off."""
        kwargs: dict[str, Any] = {
            "request_timeout": self.request_timeout,
            "max_retries": 0,
            "retry_on_timeout": False,
        }
        if self.api_key:
            kwargs["api_key"] = self.api_key
        elif self.username:
            if not self.password:
                raise ValueError("ELASTICSEARCH_USERNAME is set but no ELASTICSEARCH_PASSWORD(_FILE)")
            kwargs["basic_auth"] = (self.username, self.password)
        if any(h.startswith("https://") for h in self.hosts):
            kwargs["verify_certs"] = self.verify_certs
            if self.ca_certs:
                kwargs["ca_certs"] = self.ca_certs
            if self.client_cert:
                kwargs["client_cert"] = self.client_cert
                kwargs["client_key"] = self.client_key
        if self.plain_json:
            kwargs["node_class"] = PlainJsonNode
        return Elasticsearch(list(self.hosts), **kwargs)


def index_body(settings: ElasticsearchSettings, building: bool = False) -> dict[str, Any]:
    """Settings and mapping: BM25 k1/b and the tokenization-contract analyzer on ``contents``.

    ``contents`` (title + "\\n" + text) is sent and kept in ``_source``: ``copy_to`` or ``_source``
    excludes would save space but could not be exercised here (osmem-server supports neither).

    While ``building`` the index has no refresh and no replicas, which makes bulk loading cheaper.
    """
    return {
        "settings": {
            "number_of_shards": settings.number_of_shards,
            "number_of_replicas": 0 if building else settings.number_of_replicas,
            "refresh_interval": "-1" if building else "1s",
            "similarity": {"default": {"type": "BM25", "k1": BM25_K1, "b": BM25_B}},
            "analysis": elasticsearch_analysis(settings.token_pattern),
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "id": {"type": "keyword"},
                "title": {"type": "text", "index": False},
                "text": {"type": "text", "index": False},
                "contents": {"type": "text", "analyzer": settings.analyzer},
            },
        },
    }


def _chunks(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _body(response: Any) -> Any:
    return response.body if isinstance(response, ApiResponse) else response


class ElasticsearchBackend(SearchBackend):
    """Reads through the alias; writes either in place (upsert) or into a fresh version and swap."""

    name = "elasticsearch"

    def __init__(self, settings: ElasticsearchSettings, client: Elasticsearch | None = None) -> None:
        self.settings = settings
        self.alias = settings.alias
        self.es = client or settings.client()

    # -- plumbing -----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Retry connection errors, timeouts and 429/5xx with exponential backoff and jitter."""
        delay = self.settings.backoff_initial
        for attempt in range(self.settings.max_retries + 1):
            try:
                return fn(*args, **kwargs)
            except (elasticsearch.ConnectionError, elasticsearch.ConnectionTimeout) as exc:
                error: Exception = exc
            except elasticsearch.ApiError as exc:
                if exc.meta.status not in RETRYABLE_STATUS:
                    raise
                error = exc
            if attempt == self.settings.max_retries:
                hosts = ", ".join(re.sub(r"//[^/@]*@", "//", h) for h in self.settings.hosts)  # no credentials
                raise BackendError(
                    f"elasticsearch at {hosts}: {what} failed after {attempt + 1} attempts: {error}"
                ) from error
            sleep = min(self.settings.backoff_max, delay) * (0.5 + random.random() / 2)
            log.warning("elasticsearch %s failed (%s); retry %d in %.2fs", what, error, attempt + 1, sleep)
            time.sleep(sleep)
            delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _hit(hit: Mapping[str, Any]) -> ScoredDocument:
        src = hit["_source"]
        return ScoredDocument(
            src.get("id", hit["_id"]), src.get("title", ""), src.get("text", ""), float(hit["_score"])
        )

    def _search_body(self, query: str, k: int) -> dict[str, Any]:
        return {
            "query": {"match": {"contents": {"query": query}}},
            "size": k,
            "_source": _SOURCE_FIELDS,
            "track_total_hits": False,
        }

    # -- reads --------------------------------------------------------------------------------------
    def search(self, query: str, k: int) -> list[ScoredDocument]:
        if not tokenize(query):
            return []
        body = self._search_body(query, k)
        response = _body(self._call("search", self.es.search, index=self.alias, **body))
        return [self._hit(h) for h in response["hits"]["hits"]]

    def search_batch(self, queries: Sequence[str], k: int) -> list[list[ScoredDocument]]:
        """One ``_msearch`` round trip; queries with no tokens are answered locally with []."""
        results: list[list[ScoredDocument]] = [[] for _ in queries]
        wanted = [i for i, q in enumerate(queries) if tokenize(q)]
        if not wanted:
            return results
        searches: list[dict[str, Any]] = []
        for i in wanted:
            searches.append({"index": self.alias})
            searches.append(self._search_body(queries[i], k))
        response = _body(self._call("msearch", self.es.msearch, searches=searches))
        for i, item in zip(wanted, response["responses"], strict=True):
            if "error" in item:
                error = item["error"]
                reason = error.get("reason", error) if isinstance(error, dict) else error
                raise BackendError(f"elasticsearch msearch: query {i} failed: {reason}")
            results[i] = [self._hit(h) for h in item["hits"]["hits"]]
        return results

    def _score_body(self, query: str, ids: list[str]) -> dict[str, Any]:
        """Filter to the ids (scoring nothing) and let the query's match add each one's BM25."""
        return {
            "query": {
                "bool": {"filter": [{"ids": {"values": ids}}], "should": [{"match": {"contents": {"query": query}}}]}
            },
            "size": len(ids),
            "_source": ["id"],
            "track_total_hits": False,
        }

    def score(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        return self.score_batch([query], [ids])[0]

    def score_batch(self, queries: Sequence[str], ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """One ``_msearch`` round trip for all pairs."""
        wanted = [(i, q, list(dict.fromkeys(d))) for i, (q, d) in enumerate(zip(queries, ids, strict=True)) if d]
        results: list[dict[str, float]] = [{} for _ in queries]
        if not wanted:
            return results
        searches: list[dict[str, Any]] = []
        for _, query, unique in wanted:
            searches.append({"index": self.alias})
            searches.append(self._score_body(query, unique))
        response = _body(self._call("msearch", self.es.msearch, searches=searches))
        for (i, _, _), item in zip(wanted, response["responses"], strict=True):
            if "error" in item:
                error = item["error"]
                reason = error.get("reason", error) if isinstance(error, dict) else error
                raise BackendError(f"elasticsearch msearch: score query {i} failed: {reason}")
            results[i] = {h["_source"].get("id", h["_id"]): float(h["_score"] or 0.0) for h in item["hits"]["hits"]}
        return results

    def version(self) -> str:
        """The concrete index behind the alias: a rebuild writes a new one, so the name changes with the content.

        In-place upserts keep the name; the document count is added so those show too.
        """
        return f"elasticsearch-{'+'.join(self.versions()) or 'missing'}-{self.count()}"

    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        if not ids:
            return {}
        unique = list(dict.fromkeys(ids))
        response = _body(self._call("mget", self.es.mget, index=self.alias, ids=unique, _source=_SOURCE_FIELDS))
        found: dict[str, Document] = {}
        for item in response["docs"]:
            if item.get("found"):
                src = item["_source"]
                found[item["_id"]] = Document(src.get("id", item["_id"]), src.get("title", ""), src.get("text", ""))
        return found

    def count(self) -> int:
        return int(_body(self._call("count", self.es.count, index=self.alias))["count"])

    def health(self) -> Health:
        try:
            indices = self.versions()
            if not indices:
                return Health(False, self.name, self.alias, detail=f"alias '{self.alias}' does not exist")
            count = self.count()
            version = f"elasticsearch-{'+'.join(indices)}-{count}"
            return Health(True, self.name, f"{self.alias} -> {','.join(indices)}", count=count, version=version)
        except (elasticsearch.ApiError, elasticsearch.TransportError, BackendError) as exc:
            return Health(False, self.name, self.alias, detail=str(exc))

    def versions(self) -> list[str]:
        """Concrete indices the alias points to now (normally exactly one)."""
        try:
            response = _body(self._call("get_alias", self.es.indices.get_alias, name=self.alias))
        except elasticsearch.NotFoundError:
            return []
        return sorted(response)

    # -- writes -------------------------------------------------------------------------------------
    def new_version_name(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dt%H%M%S%f")
        return f"{self.alias}-v{stamp}"

    def create_version(self) -> str:
        name = self.new_version_name()
        self._call("create index", self.es.indices.create, index=name, **index_body(self.settings, building=True))
        return name

    def swap_alias(self, new_index: str, delete_old: bool = True) -> list[str]:
        """Point the alias at ``new_index`` in one atomic ``_aliases`` request; return the old indices."""
        old = [i for i in self.versions() if i != new_index]
        actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": self.alias}} for i in old]
        actions.append({"add": {"index": new_index, "alias": self.alias}})
        self._call("update_aliases", self.es.indices.update_aliases, actions=actions)
        if delete_old:
            for index in old:
                self._call("delete index", self.es.indices.delete, index=index)
        return old

    def _finish_version(self, index: str) -> None:
        self._call(
            "put_settings",
            self.es.indices.put_settings,
            index=index,
            settings={"index": {"refresh_interval": "1s", "number_of_replicas": self.settings.number_of_replicas}},
        )
        self._call("refresh", self.es.indices.refresh, index=index)

    def _stored(self, target: str, chunk: list[Document]) -> dict[str, tuple[str, str]]:
        """Stored (title, text) per existing id in a chunk, so unchanged passages are not rewritten."""
        ids = list(dict.fromkeys(d.id for d in chunk))
        response = _body(self._call("mget", self.es.mget, index=target, ids=ids, _source=_SOURCE_FIELDS))
        return {
            item["_id"]: (item["_source"].get("title"), item["_source"].get("text"))
            for item in response["docs"]
            if item.get("found")
        }

    def _bulk(self, target: str, chunk: list[Document], report: IndexReport, existing: set[str]) -> None:
        actions = (
            {
                "_op_type": "index",
                "_index": target,
                "_id": d.id,
                "_source": {"id": d.id, "title": d.title, "text": d.text, "contents": d.contents},
            }
            for d in chunk
        )
        for ok, item in helpers.streaming_bulk(
            self.es,
            actions,
            chunk_size=self.settings.bulk_chunk,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=self.settings.max_retries,
            initial_backoff=self.settings.backoff_initial,
            max_backoff=self.settings.backoff_max,
        ):
            result = next(iter(item.values()))
            doc_id = str(result.get("_id"))
            if ok:
                if doc_id in existing:
                    report.updated += 1
                else:
                    report.added += 1
                continue
            report.failed += 1
            error = result.get("error", result.get("exception", "unknown error"))
            if isinstance(error, dict):
                error = f"{error.get('type')}: {error.get('reason')}"
            report.errors.append(f"document '{doc_id}': status {result.get('status')}: {error}")

    def index_documents(
        self,
        documents: Iterable[Document],
        progress: ProgressCallback | None = None,
        rebuild: bool = False,
        delete_old: bool = True,
        max_failed: int = 0,
    ) -> IndexReport:
        """Upsert into the live index, or (``rebuild`` or no alias yet) build a new version and swap.

        A rebuild with more than ``max_failed`` per-document errors is abandoned: the new index is
        deleted and the alias keeps pointing at the old one.
        """
        current = self.versions()
        fresh = rebuild or not current
        if len(current) > 1 and not fresh:
            raise BackendError(f"alias '{self.alias}' points to {current}; rebuild to repair it")
        target = self.create_version() if fresh else current[0]
        report = IndexReport(index=target)
        try:
            for chunk in _chunks(documents, self.settings.bulk_chunk):
                stored = {} if fresh else self._stored(target, chunk)
                todo = [d for d in chunk if stored.get(d.id) != (d.title, d.text)]
                report.unchanged += len(chunk) - len(todo)
                if todo:
                    self._bulk(target, todo, report, set(stored))
                if progress is not None:
                    progress(len(chunk))
        except BaseException:
            if fresh:
                self._call("delete index", self.es.indices.delete, index=target)
            raise
        if fresh:
            if report.failed > max_failed:
                self._call("delete index", self.es.indices.delete, index=target)
                raise BackendError(
                    f"rebuild of '{self.alias}' abandoned: {report.failed} documents failed "
                    f"(first: {report.errors[0] if report.errors else '?'}); alias unchanged"
                )
            self._finish_version(target)
            self.swap_alias(target, delete_old=delete_old)
        elif report.written:
            self._call("refresh", self.es.indices.refresh, index=target)
        return report

    def close(self) -> None:
        self.es.close()
