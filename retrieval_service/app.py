"""HTTP API (FastAPI): search, batch search, document lookup, health and readiness.

No ``from __future__ import annotations`` here: FastAPI must resolve the request models built in
``create_app``'s closure at definition time.

Run it with ``python -m retrieval_service serve`` (uvicorn, several workers); each worker builds its
app from the environment through :func:`create_app_from_env`, so all workers serve the same index.
"""

import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval_core.backends import BackendError, SearchBackend, create_backend
from retrieval_core.documents import Document, ScoredDocument
from retrieval_service import __version__
from retrieval_service.reranking import PassageReranker
from retrieval_service.settings import Limits, ServiceSettings

log = logging.getLogger(__name__)
_REOPEN_INTERVAL_S = 2.0


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": [{"field", "message"}]}`` with ``status``."""

    def __init__(self, status: int, code: str, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.message = message


def _error(
    status: int, code: str, detail: list[dict[str, str]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str


class Hit(DocumentOut):
    score: float  # BM25, or the reranker's score when the request asked to rerank


class SearchResponse(BaseModel):
    results: list[Hit]
    took_ms: float


class BatchResponse(BaseModel):
    results: list[list[Hit]]
    took_ms: float


class MgetResponse(BaseModel):
    documents: list[DocumentOut]
    missing: list[str]


class ScoreResponse(BaseModel):
    scores: dict[str, float]
    took_ms: float


class ScoreBatchResponse(BaseModel):
    scores: list[dict[str, float]]
    took_ms: float


def _hits(docs: list[ScoredDocument]) -> list[Hit]:
    return [Hit(id=d.id, title=d.title, text=d.text, score=d.score) for d in docs]


def _doc(doc: Document) -> DocumentOut:
    return DocumentOut(id=doc.id, title=doc.title, text=doc.text)


def _non_blank(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"{field} must contain at least one non-whitespace character")
    return value


def _request_models(limits: Limits) -> tuple[type[BaseModel], ...]:
    """Request models with this deployment's limits baked in, so OpenAPI documents the real bounds."""
    query_type = Annotated[str, Field(min_length=1, max_length=limits.max_query_chars)]
    k_type = Annotated[int, Field(ge=1, le=limits.max_k, description="number of passages to return")]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: query_type
        k: k_type = 10
        rerank: bool = Field(default=False, description="order BM25's top candidates with the KARD reranker")

        @field_validator("query")
        @classmethod
        def _query_not_blank(cls, value: str) -> str:
            return _non_blank(value, "query")

    class BatchSearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: Annotated[list[query_type], Field(min_length=1, max_length=limits.max_batch)]
        k: k_type = 10
        rerank: bool = Field(default=False, description="order BM25's top candidates with the KARD reranker")

        @field_validator("queries")
        @classmethod
        def _queries_not_blank(cls, values: list[str]) -> list[str]:
            for i, value in enumerate(values):
                if not value.strip():
                    raise ValueError(f"queries[{i}] must contain at least one non-whitespace character")
            return values

    class MgetRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=512)]],
            Field(min_length=1, max_length=limits.max_batch),
        ]

    id_list = Annotated[
        list[Annotated[str, Field(min_length=1, max_length=512)]],
        Field(min_length=1, max_length=limits.max_batch),
    ]

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: query_type
        ids: id_list

    class ScoreBatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[list[ScoreRequest], Field(min_length=1, max_length=limits.max_batch)]

    return SearchRequest, BatchSearchRequest, MgetRequest, ScoreRequest, ScoreBatchRequest


class BackendHolder:
    """Opens the backend lazily and retries, so a worker starts before the index or cluster is ready."""

    def __init__(self, settings: ServiceSettings, backend: SearchBackend | None) -> None:
        self._settings = settings
        self._backend = backend
        self._lock = threading.Lock()
        self._last_error = ""
        self._last_attempt = 0.0

    def get(self) -> SearchBackend:
        if self._backend is not None:
            return self._backend
        with self._lock:
            if self._backend is None and time.monotonic() - self._last_attempt >= _REOPEN_INTERVAL_S:
                self._last_attempt = time.monotonic()
                try:
                    self._backend = create_backend(self._settings.backend, self._settings.index)
                    self._last_error = ""
                except (BackendError, ValueError, OSError) as exc:
                    self._last_error = str(exc)
                    log.warning("backend not ready: %s", exc)
            if self._backend is None:
                raise ApiError(503, "backend_unavailable", "backend", self._last_error or "backend not ready")
            return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")] if loc else []
    if loc and loc[0] == "body":
        parts = [str(p) for p in loc[1:]]
    return ".".join(parts) or str(loc[0] if loc else "body")


def create_app(backend: SearchBackend | None = None, settings: ServiceSettings | None = None) -> FastAPI:
    """Build the app around ``backend`` (or the one named in ``settings``, opened lazily)."""
    settings = settings or ServiceSettings.from_env()
    holder = BackendHolder(settings, backend)
    SearchRequest, BatchSearchRequest, MgetRequest, ScoreRequest, ScoreBatchRequest = _request_models(settings.limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            holder.get()
        except ApiError as exc:
            log.warning("starting without a backend: %s", exc.message)
        yield
        holder.close()

    app = FastAPI(
        title="ReasonDistill retrieval service",
        version=__version__,
        description="BM25 passage retrieval for KARD (tantivy or Elasticsearch backend).",
        lifespan=lifespan,
    )
    bearer = HTTPBearer(auto_error=False)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if settings.token is None:
            return
        if credentials is None:
            raise ApiError(
                401, "unauthorized", "Authorization", "missing 'Authorization: Bearer <token>' header"
            )
        if not hmac.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise ApiError(401, "unauthorized", "Authorization", "invalid bearer token")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, [{"field": exc.field, "message": exc.message}], headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            first = next(e for e in errors if e.get("type") == "json_invalid")
            reason = (first.get("ctx") or {}).get("error", "invalid JSON")
            return _error(
                400, "malformed_json", [{"field": "body", "message": f"malformed JSON body: {reason}"}]
            )
        detail = []
        for e in errors:
            field = _field_of(tuple(e.get("loc", ())))
            message = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
            if e.get("type") == "missing" and field == "body":
                message = "request body is required (JSON object)"
            elif field == "body" and e.get("type") in ("model_attributes_type", "dict_type"):
                message = "request body must be a JSON object sent with Content-Type: application/json"
            detail.append({"field": field, "message": message})
        return _error(422, "validation_error", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Framework-level rejections (undecodable body, unknown path, wrong method) in the same error shape."""
        field = {400: "body", 404: "path", 405: "method"}.get(exc.status_code, "request")
        code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, [{"field": field, "message": str(exc.detail)}], exc.headers)

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
        log.error("backend error: %s", exc)
        return _error(503, "backend_unavailable", [{"field": "backend", "message": str(exc)}])

    protected = [Depends(require_token)]

    reranker = PassageReranker(settings.reranker, settings.rerank_candidates) if settings.reranker else None

    def ranked(queries: list[str], k: int, rerank: bool) -> list[list[ScoredDocument]]:
        if not rerank:
            return holder.get().search_batch(queries, k)
        if reranker is None:
            raise ApiError(400, "rerank_unavailable", "rerank", "this service was started without a reranker")
        return reranker.search(holder.get(), queries, k)

    @app.post("/search", response_model=SearchResponse, dependencies=protected)
    def search(request: SearchRequest) -> SearchResponse:  # type: ignore[valid-type]
        """Top-k passages for one query, best first (BM25, or BM25's top candidates reranked)."""
        start = time.perf_counter()
        [results] = ranked([request.query], request.k, request.rerank)  # type: ignore[attr-defined]
        return SearchResponse(results=_hits(results), took_ms=(time.perf_counter() - start) * 1000)

    @app.post("/search/batch", response_model=BatchResponse, dependencies=protected)
    def search_batch(request: BatchSearchRequest) -> BatchResponse:  # type: ignore[valid-type]
        """Top-k passages for each query, one list per query in request order."""
        start = time.perf_counter()
        results = ranked(request.queries, request.k, request.rerank)  # type: ignore[attr-defined]
        return BatchResponse(
            results=[_hits(r) for r in results], took_ms=(time.perf_counter() - start) * 1000
        )

    @app.get(
        "/documents/{doc_id:path}",
        response_model=DocumentOut,
        dependencies=protected,
        responses={404: {"description": "unknown id"}},
    )
    def get_document(doc_id: str) -> DocumentOut:
        """One passage by id; 404 when the id is unknown."""
        found = holder.get().get([doc_id])
        if doc_id not in found:
            raise ApiError(404, "not_found", "id", f"no document with id {doc_id!r}")
        return _doc(found[doc_id])

    @app.post("/documents/mget", response_model=MgetResponse, dependencies=protected)
    def mget(request: MgetRequest) -> MgetResponse:  # type: ignore[valid-type]
        """Several passages by id; unknown ids are listed in ``missing`` instead of failing the call."""
        ids: list[str] = request.ids  # type: ignore[attr-defined]
        found = holder.get().get(ids)
        return MgetResponse(
            documents=[_doc(found[i]) for i in ids if i in found],
            missing=[i for i in ids if i not in found],
        )

    @app.post("/score", response_model=ScoreResponse, dependencies=protected)
    def score(request: ScoreRequest) -> ScoreResponse:  # type: ignore[valid-type]
        """BM25 scores of the listed passages for the query, ranked or not (0.0: no shared term; unknown: absent)."""
        start = time.perf_counter()
        scores = holder.get().score(request.query, request.ids)  # type: ignore[attr-defined]
        return ScoreResponse(scores=scores, took_ms=(time.perf_counter() - start) * 1000)

    @app.post("/score/batch", response_model=ScoreBatchResponse, dependencies=protected)
    def score_batch(request: ScoreBatchRequest) -> ScoreBatchResponse:  # type: ignore[valid-type]
        """One score map per item, in request order."""
        start = time.perf_counter()
        items = request.items  # type: ignore[attr-defined]
        scores = holder.get().score_batch([i.query for i in items], [i.ids for i in items])
        return ScoreBatchResponse(scores=scores, took_ms=(time.perf_counter() - start) * 1000)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers; says nothing about the index."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", responses={503: {"description": "backend not ready"}})
    def readyz() -> JSONResponse:
        """Readiness: the backend is open and answers a count."""
        try:
            health = holder.get().health()
        except ApiError as exc:
            return _error(503, exc.code, [{"field": exc.field, "message": exc.message}])
        return JSONResponse(health.to_dict(), status_code=200 if health.ok else 503)

    return app


def create_app_from_env() -> FastAPI:
    """uvicorn ``--factory`` entry point: every worker reads the same environment."""
    return create_app(settings=ServiceSettings.from_env())
