"""Passage retrieval for KARD as a service: HTTP search over retrieval_core's backends (an embedded tantivy index or
Elasticsearch), optionally reranked by retrieval_core's late-interaction scorer.

The trainer talks to it through :class:`retrieval_service.client.RetrievalClient`; operators run
``python -m retrieval_service index|serve``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
