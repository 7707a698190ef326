"""The service's `rerank` option: BM25 top-N, then the order of a trained KARD reranker.

The same two steps, the same candidate count and the same scorer (retrieval_core.late_interaction) as KARD's
evaluation, so a deployed KARD student reads the passages it was evaluated with, provided it sends the same query
(question and options, as trainer.kard.knowledge.question_query writes it).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from retrieval_core.backends import SearchBackend
from retrieval_core.documents import ScoredDocument
from retrieval_core.model_sources import is_mlflow_uri, mlflow_model_directory

if TYPE_CHECKING:
    from retrieval_core.late_interaction import LateInteractionScorer


class PassageReranker:
    """Loads the reranker (a directory or an MLflow model URI) on first use, once per worker process."""

    def __init__(self, source: str, candidates: int) -> None:
        self.source = source
        self.candidates = candidates
        self._lock = threading.Lock()

    @functools.cached_property
    def scorer(self) -> LateInteractionScorer:
        """Imported here: a service without a reranker never loads torch models."""
        from retrieval_core.late_interaction import LateInteractionScorer

        directory = self.source
        if is_mlflow_uri(directory):
            directory = mlflow_model_directory(directory, os.environ.get("MLFLOW_TRACKING_URI"))
        return LateInteractionScorer(directory)

    def search(self, backend: SearchBackend, queries: Sequence[str], k: int) -> list[list[ScoredDocument]]:
        """Per query, the k best of BM25's top `candidates` by reranker score (ties keep BM25's order)."""
        from retrieval_core.late_interaction import passage_text

        pools = backend.search_batch(list(queries), self.candidates)
        results = []
        with self._lock:  # one model per process; torch already uses every core for one batch
            for query, pool in zip(queries, pools, strict=True):
                scores = self.scorer.score(query, [passage_text(d.title, d.text) for d in pool])
                order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:k]
                results.append([ScoredDocument(pool[i].id, pool[i].title, pool[i].text, scores[i]) for i in order])
        return results
