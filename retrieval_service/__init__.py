"""Passage retrieval for KARD: one search interface over an embedded tantivy index or Elasticsearch.

The trainer talks to it through :class:`retrieval_service.client.RetrievalClient`; operators run
``python -m retrieval_service index|serve``.
"""

from retrieval_service.documents import Document, ScoredDocument

__all__ = ["Document", "ScoredDocument", "__version__"]

__version__ = "0.1.0"
