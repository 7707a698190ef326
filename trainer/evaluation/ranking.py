"""Ranking evaluation (KARD's reranker): recall@k of the passages the gold rationale retrieves, among the
reranked candidates and among BM25's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def recall_at(targets: Sequence[str], ranked: Sequence[str], k: int) -> float:
    """Share of `targets` among the first k of `ranked`."""
    return len(set(targets) & set(ranked[:k])) / len(targets)


@dataclass(frozen=True)
class RankedPrediction:
    id: str
    target_ids: list[str]
    bm25_ids: list[str]
    reranked_ids: list[str]
    scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RankingEvaluation:
    """recall@k of the gold rationale's passages among the reranked and the BM25 candidates."""

    predictions: list[RankedPrediction]
    cutoffs: tuple[int, ...]

    @property
    def selection_metric(self) -> str:
        """Model selection keeps the step with the best reranked recall at the smallest k."""
        return f"reranker_recall_at_{min(self.cutoffs)}"

    @property
    def selection_score(self) -> float:
        return self.metrics()[f"dev/{self.selection_metric}"]

    def metrics(self, prefix: str = "dev") -> dict[str, float]:
        judged = [p for p in self.predictions if p.target_ids]
        values = {f"{prefix}/num_examples": float(len(judged))}
        for k in self.cutoffs:
            for name, ranked in (("reranker_recall", "reranked_ids"), ("bm25_recall", "bm25_ids")):
                hits = [recall_at(p.target_ids, getattr(p, ranked), k) for p in judged]
                values[f"{prefix}/{name}_at_{k}"] = sum(hits) / len(hits) if hits else 0.0
        return values

    def records(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.predictions]

    def table_rows(self) -> list[dict[str, Any]]:
        return [{k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in self.records()]
