"""Backend factory: the service, indexer, benchmark and trainer pick a backend by name.

Every backend returns scores in one convention, Lucene's BM25, so no caller rescales by backend.
"""

from __future__ import annotations

from typing import Any

from retrieval_core.backends.base import BackendError, Health, IndexReport, SearchBackend

BACKENDS = ("tantivy", "elasticsearch")
DEFAULT_ES_ALIAS = "kard-passages"

__all__ = ["BACKENDS", "DEFAULT_ES_ALIAS", "BackendError", "Health", "IndexReport", "SearchBackend", "create_backend"]


def create_backend(name: str, index: str, create: bool = False, **options: Any) -> SearchBackend:
    """Open backend ``name`` on ``index`` (a directory for tantivy, an alias for Elasticsearch).

    Elasticsearch connection settings come from the environment (see docs/retrieval_service.md);
    ``options`` may carry ``settings=ElasticsearchSettings(...)`` instead. Imports are lazy so the
    embedded path never needs the Elasticsearch client configured.
    """
    if name == "tantivy":
        from retrieval_core.backends.tantivy_backend import TantivyBackend

        return TantivyBackend(index, create=create, **options)
    if name in ("elasticsearch", "es"):
        from dataclasses import replace

        from retrieval_core.backends.elasticsearch_backend import (
            ElasticsearchBackend,
            ElasticsearchSettings,
        )

        settings = options.pop("settings", None) or ElasticsearchSettings.from_env(alias=index)
        return ElasticsearchBackend(replace(settings, alias=index), **options)
    raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
