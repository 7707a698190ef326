"""A pipeline's `knowledge` stage: KARD's training-time retrieval (and rationale verification) as a Ray Data job.

Every query of the knowledge dataset goes through `map_batches` over an actor pool, each actor holding its own
retriever (an embedded index reader, a retrieval-service client, or an Elasticsearch client) or verifier model;
the driver assembles the Hugging Face dataset (trainer.kard.knowledge), reuses it when nothing changed, and
records it in MLflow as the stage run's dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import ray
import ray.data

from trainer.config.loader import flatten
from trainer.config.schema import ExperimentConfig
from trainer.data.example import QAExample
from trainer.kard.knowledge import KnowledgeBase, SearchRequest, search_grouped
from trainer.kard.prepare import prepare_knowledge
from trainer.kard.prompt import Passage
from trainer.kard.rationale_filter import RationaleCandidate, VerifierFilter
from trainer.kard.retriever import Hit, RetrieverSpec
from trainer.methods.kard.student import knowledge_dataset
from trainer.tracking.mlflow_tracker import MLflowTracker, run_identity


class _SearchActor:
    def __init__(self, spec: RetrieverSpec) -> None:
        self.retriever = spec.open()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        requests = list(zip(batch["query"], (int(k) for k in batch["k"]), strict=True))
        hits = search_grouped(self.retriever, requests, len(requests))
        return pd.DataFrame(
            {"row": batch["row"], "ids": [[i for i, _ in h] for h in hits], "scores": [[s for _, s in h] for h in hits]}
        )


class _ScoreActor:
    def __init__(self, spec: RetrieverSpec) -> None:
        self.retriever = spec.open()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = self.retriever.score_batch(list(batch["query"]), [list(ids) for ids in batch["ids"]])
        return pd.DataFrame(
            {"row": batch["row"], "ids": [list(r) for r in rows], "scores": [list(r.values()) for r in rows]}
        )


class _FetchActor:
    def __init__(self, spec: RetrieverSpec) -> None:
        self.retriever = spec.open()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        found = self.retriever.get(list(batch["id"]))
        docs = [found[i] for i in batch["id"] if i in found]
        return pd.DataFrame(
            {"id": [d.id for d in docs], "title": [d.title for d in docs], "text": [d.text for d in docs]}
        )


class _VerifyActor:
    def __init__(self, model_source: str, device: str) -> None:
        self.verifier = VerifierFilter(model_source, device=device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        candidates = [
            RationaleCandidate(QAExample(r.id, r.question, tuple(r.choices), int(r.answer_index)), int(r.index), r.text)
            for r in batch.itertuples()
        ]
        return pd.DataFrame({"row": batch["row"], "reason": self.verifier(candidates)})


class RayDataQueries:
    """The knowledge build's executor on a Ray cluster: each call is one Ray Data pass over an actor pool."""

    def __init__(self, spec: RetrieverSpec, cfg: ExperimentConfig) -> None:
        self.spec = spec
        self.actors = cfg.retrieval.actors
        self.verifier_model = cfg.data.verifier_model
        self.use_gpu = cfg.run.use_gpu
        ray.data.DataContext.get_current().enable_progress_bars = False

    def _run(
        self, rows: list[dict[str, Any]], actor: type, constructor: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if not rows:
            return []
        gpus: dict[str, Any] = {"num_gpus": 1} if actor is _VerifyActor and self.use_gpu else {}
        dataset = ray.data.from_items(rows).map_batches(
            actor,
            fn_constructor_kwargs=constructor or {"spec": self.spec},
            batch_size=self.spec.batch_size,
            batch_format="pandas",
            concurrency=self.actors,
            **gpus,
        )
        return dataset.take_all()

    def search(self, requests: list[SearchRequest]) -> list[list[Hit]]:
        rows = self._run([{"row": i, "query": q, "k": k} for i, (q, k) in enumerate(requests)], _SearchActor)
        ordered = sorted(rows, key=lambda r: r["row"])
        return [list(zip(r["ids"], r["scores"], strict=True)) for r in ordered]

    def score(self, queries: list[str], ids: list[list[str]]) -> list[dict[str, float]]:
        items = [{"row": i, "query": q, "ids": list(d)} for i, (q, d) in enumerate(zip(queries, ids, strict=True))]
        rows = sorted(self._run(items, _ScoreActor), key=lambda r: r["row"])
        return [dict(zip(r["ids"], r["scores"], strict=True)) for r in rows]

    def fetch(self, ids: list[str]) -> dict[str, Passage]:
        rows = self._run([{"id": i} for i in ids], _FetchActor)
        return {r["id"]: Passage(r["id"], r["title"], r["text"]) for r in rows}

    def verify(self, candidates: Sequence[RationaleCandidate]) -> list[str]:
        if not self.verifier_model:
            raise ValueError("data.verifier_model: the verifier filter needs a model")
        device = "cuda" if self.use_gpu else "cpu"
        items = [
            {
                "row": row,
                "id": c.example.id,
                "question": c.example.question,
                "choices": list(c.example.choices),
                "answer_index": c.example.answer_index,
                "index": c.index,
                "text": c.text,
            }
            for row, c in enumerate(candidates)
        ]
        rows = self._run(items, _VerifyActor, {"model_source": self.verifier_model, "device": device})
        return [r["reason"] for r in sorted(rows, key=lambda r: r["row"])]


def run_knowledge_stage(
    cfg: ExperimentConfig, parent_run_id: str | None = None, run_tags: dict[str, str] | None = None
) -> dict[str, Any]:
    """Build or reuse the knowledge dataset, in an MLflow run of its own (params, counts, the dataset as input)."""
    build = prepare_knowledge(cfg, RayDataQueries)
    # "knowledge", not the method it is built for: `tags.method = 'kard'` filters show the runs that train
    run_name, identity = run_identity(cfg, "knowledge", run_tags or {})
    tracker = MLflowTracker(
        cfg.tracking,
        run_name=run_name,
        parent_run_id=parent_run_id,
        tags={"stage_kind": "knowledge", **identity, **(run_tags or {})},
    )
    tracker.log_params({**flatten(cfg), "knowledge.key": build.manifest["key"], "knowledge.path": str(build.path)})
    tracker.set_tags({"knowledge.reused": str(build.reused).lower()})
    metrics = build.manifest["metrics"]
    tracker.log_metrics(metrics, step=0)
    tracker.log_dict(build.manifest, "knowledge/manifest.json")
    tracker.log_input(knowledge_dataset(KnowledgeBase(build.path)), "training")
    tracker.finish()
    return {
        **metrics,
        "knowledge_path": str(build.path),
        "knowledge_key": build.manifest["key"],
        "reused": build.reused,
        "mlflow_run_id": tracker.run_id,
    }
