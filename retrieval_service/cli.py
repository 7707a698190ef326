"""``python -m retrieval_service index|serve|search``: build an index, serve it, query it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Sequence

from retrieval_core.backends import BACKENDS, DEFAULT_ES_ALIAS, BackendError, create_backend
from retrieval_core.documents import MalformedLineError
from retrieval_service import settings as cfg


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _default_index(backend: str) -> str:
    return DEFAULT_ES_ALIAS if backend == "elasticsearch" else str(cfg.DEFAULT_INDEX_DIR)


def _add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get(cfg.ENV_BACKEND, "tantivy"),
        help="tantivy (embedded, default) or elasticsearch (env: RETRIEVAL_BACKEND)",
    )
    parser.add_argument(
        "--index",
        default=os.environ.get(cfg.ENV_INDEX),
        help="tantivy: index directory; elasticsearch: alias (env: RETRIEVAL_INDEX)",
    )


def _cmd_index(args: argparse.Namespace) -> int:
    from retrieval_service.indexer import index_files

    inputs = args.input or [str(cfg.wikipedia_passages())]
    missing = [p for p in inputs if not os.path.isfile(p)]
    if missing:  # before opening the backend, so no empty index is left behind
        print(f"error: input file not found: {missing[0]}", file=sys.stderr)
        return 2
    index = args.index or _default_index(args.backend)
    options = {}
    if args.backend == "elasticsearch":
        options = {"rebuild": args.rebuild, "delete_old": not args.keep_old}
    elif args.rebuild:
        print("--rebuild applies to elasticsearch only; tantivy commits atomically in place", file=sys.stderr)
    try:
        with create_backend(args.backend, index, create=True) as backend:
            run = index_files(
                backend, inputs, on_malformed=args.on_malformed, progress=not args.no_progress, **options
            )
    except MalformedLineError as exc:
        print(f"error: malformed input: {exc} (use --on-malformed skip to skip such lines)", file=sys.stderr)
        return 2
    except (FileNotFoundError, BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(run.to_dict(), indent=2))
    return 1 if run.report.failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    index = args.index or _default_index(args.backend)
    os.environ[cfg.ENV_BACKEND] = args.backend
    os.environ[cfg.ENV_INDEX] = index
    if args.token_file:
        os.environ[cfg.ENV_TOKEN_FILE] = args.token_file
    for env, value in (
        (cfg.ENV_MAX_K, args.max_k),
        (cfg.ENV_MAX_BATCH, args.max_batch),
        (cfg.ENV_MAX_QUERY_CHARS, args.max_query_chars),
        (cfg.ENV_RERANKER, args.reranker),
        (cfg.ENV_RERANK_CANDIDATES, args.rerank_candidates),
    ):
        if value is not None:
            os.environ[env] = str(value)
    try:
        settings = cfg.ServiceSettings.from_env()  # fail fast on bad env before forking workers
        if settings.token is None and not is_loopback_host(args.host) and not args.allow_unauthenticated:
            raise ValueError(
                f"--host {args.host} is reachable from other machines and no bearer token is set "
                f"({cfg.ENV_TOKEN}, {cfg.ENV_TOKEN_FILE} or --token-file); pass --allow-unauthenticated "
                "to serve without one anyway"
            )
        if not args.allow_missing_index:
            with create_backend(settings.backend, settings.index) as backend:
                health = backend.health()
                if not health.ok:
                    raise BackendError(health.detail)
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        "retrieval_service.app:create_app_from_env",
        factory=True,
        http="retrieval_service.uvicorn_protocol:NoDelayH11Protocol",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_keep_alive=30,
    )
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    index = args.index or _default_index(args.backend)
    try:
        with create_backend(args.backend, index) as backend:
            for hit in backend.search(args.query, args.k):
                print(json.dumps(hit.to_dict(), ensure_ascii=False))
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval_service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_index = sub.add_parser("index", help="build or update an index from JSONL(.gz) passages")
    _add_backend_args(p_index)
    p_index.add_argument(
        "--input",
        action="append",
        metavar="PATH",
        help="JSONL(.gz) with id/title/text; repeatable (default: shared Wikipedia passages)",
    )
    p_index.add_argument(
        "--on-malformed",
        choices=("skip", "fail"),
        default="skip",
        help="skip malformed lines (reported with line numbers) or stop at the first one",
    )
    p_index.add_argument(
        "--rebuild",
        action="store_true",
        help="elasticsearch: build a new versioned index and swap the alias atomically",
    )
    p_index.add_argument("--keep-old", action="store_true", help="elasticsearch: keep the replaced index")
    p_index.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_index.set_defaults(func=_cmd_index)

    p_serve = sub.add_parser("serve", help="serve the HTTP API with uvicorn")
    _add_backend_args(p_serve)
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=2)
    p_serve.add_argument("--token-file", help="file holding the bearer token (or env RETRIEVAL_API_TOKEN)")
    p_serve.add_argument("--max-k", type=int)
    p_serve.add_argument("--max-batch", type=int)
    p_serve.add_argument("--max-query-chars", type=int)
    p_serve.add_argument(
        "--reranker",
        help="KARD reranker (dir or MLflow runs:/ URI) for requests with rerank=true (env: RETRIEVAL_RERANKER)",
    )
    p_serve.add_argument("--rerank-candidates", type=int, help="BM25 hits the reranker orders (default 100)")
    p_serve.add_argument(
        "--allow-missing-index",
        action="store_true",
        help="start even if the index is not there yet (/readyz answers 503 until it is)",
    )
    p_serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without a bearer token (refused otherwise)",
    )
    p_serve.add_argument("--log-level", default="warning")
    p_serve.add_argument("--access-log", action="store_true")
    p_serve.set_defaults(func=_cmd_serve)

    p_search = sub.add_parser("search", help="query an index from the shell")
    _add_backend_args(p_search)
    p_search.add_argument("query")
    p_search.add_argument("-k", type=int, default=5)
    p_search.set_defaults(func=_cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))
