"""The knowledge dataset every KARD stage reads: filtered rationales with their retrieved passages.

Built once per (questions, rationale filter, index version, retrieval settings), written as a Hugging Face
`datasets` DatasetDict under a key of all of those, and reused while none of them changes:

- train: one row per kept (question, rationale): the top-k passages retrieved by the rationale (the student's
  training knowledge), and the reranker's candidates (the union of the question's and the rationale's BM25
  hits, deduplicated) with rho = BM25(rationale, candidate), the rationale-relevance the reranker learns;
- dev: per dev question, its top-N BM25 candidates by question + options (for BM25-only KARD and for the
  reranker) and the passages its gold rationale retrieves (the oracle row and the recall@k targets);
- passages: id, title and text of every passage referenced above, so training never needs the service.

How the queries run is the executor's business: in-process here, Ray Data actors in the pipeline stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from datasets import Dataset, DatasetDict, load_from_disk

from retrieval_service.documents import ScoredDocument
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.registry import DatasetSplits
from trainer.kard.prompt import Passage
from trainer.kard.rationale_filter import (
    KEPT,
    RationaleCandidate,
    VerifierFilter,
    filter_rationales,
    parse_filter,
)
from trainer.kard.retriever import Retriever, RetrieverSpec

FORMAT_VERSION = 1
MANIFEST = "knowledge.json"
Judge = Callable[[Sequence[RationaleCandidate]], list[str]]


class QueryExecutor(Protocol):
    """Runs retrieval (and verifier) work in bulk, in order."""

    def search(self, queries: list[str], k: int) -> list[list[ScoredDocument]]: ...
    def score(self, queries: list[str], ids: list[list[str]]) -> list[dict[str, float]]: ...
    def verify(self, candidates: list[RationaleCandidate]) -> list[str]: ...


class LocalQueries:
    """The executor for one process: batches through a Retriever, verifies with a model on this machine."""

    def __init__(self, spec: RetrieverSpec, verifier: str | None = None) -> None:
        self.spec = spec
        self.verifier_source = verifier

    @functools.cached_property
    def retriever(self) -> Retriever:
        return self.spec.open()

    def search(self, queries: list[str], k: int) -> list[list[ScoredDocument]]:
        size = self.spec.batch_size
        return [
            hits for i in range(0, len(queries), size) for hits in self.retriever.search_batch(queries[i : i + size], k)
        ]

    def score(self, queries: list[str], ids: list[list[str]]) -> list[dict[str, float]]:
        size = self.spec.batch_size
        return [
            row
            for i in range(0, len(queries), size)
            for row in self.retriever.score_batch(queries[i : i + size], ids[i : i + size])
        ]

    def verify(self, candidates: list[RationaleCandidate]) -> list[str]:
        if not self.verifier_source:
            raise ValueError("data.verifier_model: the verifier filter needs a model")
        return VerifierFilter(self.verifier_source)(candidates)


def question_query(example: QAExample) -> str:
    """What retrieves for a question at inference: its text and its options (the paper's query)."""
    return " ".join([example.question, *example.choices])


def dataset_fingerprint(splits: DatasetSplits) -> str:
    """Content hash of both splits (ids, questions, choices, labels, rationales), whatever file they came from."""
    digest = hashlib.sha256()
    for split in (splits.train, splits.dev):
        for ex in split:
            digest.update(json.dumps([ex.id, ex.question, ex.choices, ex.answer_index, ex.rationales]).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class KnowledgeRequest:
    """Everything a knowledge dataset depends on; its hash names the dataset on disk."""

    dataset: str
    dataset_fingerprint: str
    rationale_filter: str
    keep_unstated: bool
    verifier: str | None
    retriever_mode: str
    retriever_version: str
    train_k: int
    candidates_per_query: int
    dev_candidates: int
    dev_oracle_k: int
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, splits: DatasetSplits, spec: RetrieverSpec, version: str):
        kard, reranker = cfg.method.kard, cfg.method.reranker
        return cls(
            dataset=cfg.data.dataset,
            dataset_fingerprint=dataset_fingerprint(splits),
            rationale_filter=cfg.data.rationale_filter,
            keep_unstated=cfg.data.keep_unstated_rationales,
            verifier=cfg.data.verifier_model if cfg.data.rationale_filter == "verifier" else None,
            retriever_mode=spec.mode,
            retriever_version=version,
            train_k=max(1, kard.train_passages),
            candidates_per_query=reranker.candidates_per_query,
            dev_candidates=kard.candidates,
            dev_oracle_k=max(1, kard.inference_passages, kard.train_passages, *reranker.eval_k),
        )

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainKnowledge:
    example_id: str
    rationale_index: int
    rationale: str
    passage_ids: list[str]
    candidate_ids: list[str]
    candidate_rho: list[float]


@dataclass(frozen=True)
class DevKnowledge:
    example_id: str
    candidate_ids: list[str]
    candidate_scores: list[float]
    oracle_rationale: str
    oracle_ids: list[str]


class KnowledgeBase:
    """A built knowledge dataset, loaded for lookups by example id."""

    def __init__(self, path: Path) -> None:
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise DataError(f"method.kard.knowledge: {path} is not a knowledge dataset (no {MANIFEST})")
        self.path = path
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        data = load_from_disk(str(path))
        self.dataset: DatasetDict = data
        self.train: dict[str, list[TrainKnowledge]] = {}
        for row in data["train"]:
            self.train.setdefault(row["example_id"], []).append(TrainKnowledge(**row))
        self.dev = {row["example_id"]: DevKnowledge(**row) for row in data["dev"]}
        self.passages = {row["id"]: Passage(**row) for row in data["passages"]}

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    def lookup(self, ids: Sequence[str]) -> list[Passage]:
        return [self.passages[i] for i in ids]

    def check_covers(self, examples: Sequence[QAExample], split: str) -> None:
        """A knowledge dataset built for other questions would silently give no passages: refuse it."""
        table = self.dev if split == "dev" else self.train
        missing = [ex.id for ex in examples if ex.id not in table]
        if split == "dev" and missing:
            raise DataError(
                f"method.kard.knowledge: {self.path} has no dev knowledge for {len(missing)} of {len(examples)} "
                f"dev questions (first: {missing[0]!r}); it was built for another dataset or split"
            )


def _judge(cfg: ExperimentConfig, executor: QueryExecutor) -> Judge:
    if cfg.data.rationale_filter == "verifier":
        return executor.verify
    if cfg.data.rationale_filter == "parse":
        return functools.partial(parse_filter, keep_unstated=cfg.data.keep_unstated_rationales)
    return lambda candidates: [KEPT] * len(candidates)


def _oracle_rationale(example: QAExample) -> str:
    """The dev question's gold rationale: the first that states the gold answer or none; '' without one."""
    candidates = [RationaleCandidate(example, i, r) for i, r in enumerate(example.rationales)]
    for candidate, reason in zip(candidates, parse_filter(candidates, keep_unstated=True), strict=True):
        if reason == KEPT:
            return candidate.text
    return ""


def _recall(targets: Sequence[str], ranked: Sequence[str], k: int) -> float:
    return len(set(targets) & set(ranked[:k])) / len(targets)


@dataclass(frozen=True)
class KnowledgeBuild:
    path: Path
    reused: bool
    manifest: dict[str, Any]


def build_knowledge(
    cfg: ExperimentConfig,
    splits: DatasetSplits,
    spec: RetrieverSpec,
    executor: QueryExecutor,
    cache_dir: Path,
    retriever_version: str,
) -> KnowledgeBuild:
    """Build (or find) the knowledge dataset for this config; written atomically, so a crash leaves nothing."""
    request = KnowledgeRequest.from_config(cfg, splits, spec, retriever_version)
    out = cache_dir / f"{cfg.data.dataset}-{request.key}"
    if (out / MANIFEST).is_file():
        return KnowledgeBuild(out, True, json.loads((out / MANIFEST).read_text()))
    started = time.monotonic()
    kept, report = filter_rationales(splits.train, _judge(cfg, executor))
    if not kept:
        raise DataError(
            f"dataset {cfg.data.dataset!r}: no training rationale left after data.rationale_filter="
            f"{cfg.data.rationale_filter!r} ({report.metrics()})"
        )
    k, per_query = request.train_k, request.candidates_per_query
    rationale_hits = executor.search([c.text for c in kept], max(k, per_query))
    question_hits = dict(
        zip(
            [ex.id for ex in splits.train],
            executor.search([question_query(ex) for ex in splits.train], per_query),
            strict=True,
        )
    )
    passages: dict[str, Passage] = {}
    only_by_question: list[list[str]] = []
    for hits_r, candidate in zip(rationale_hits, kept, strict=True):
        seen = {h.id for h in hits_r}
        only_by_question.append([h.id for h in question_hits[candidate.example.id] if h.id not in seen])
    extra_rho = executor.score([c.text for c in kept], only_by_question)
    train_rows = []
    question_recall = 0.0
    for candidate, hits_r, q_only, rho_q in zip(kept, rationale_hits, only_by_question, extra_rho, strict=True):
        for hit in [*hits_r, *question_hits[candidate.example.id]]:
            passages.setdefault(hit.id, Passage(hit.id, hit.title, hit.text))
        rho = {h.id: h.score for h in hits_r[:per_query]}
        rho.update({i: rho_q.get(i, 0.0) for i in q_only})
        ranked_q = [h.id for h in question_hits[candidate.example.id]]
        if hits_r:
            question_recall += _recall([h.id for h in hits_r[:k]], ranked_q, k)
        train_rows.append(
            {
                "example_id": candidate.example.id,
                "rationale_index": candidate.index,
                "rationale": candidate.text,
                "passage_ids": [h.id for h in hits_r[:k]],
                "candidate_ids": list(rho),
                "candidate_rho": list(rho.values()),
            }
        )
    oracle_texts = [_oracle_rationale(ex) for ex in splits.dev]
    dev_hits = executor.search([question_query(ex) for ex in splits.dev], request.dev_candidates)
    with_oracle = [i for i, text in enumerate(oracle_texts) if text]
    oracle_hits = dict(
        zip(with_oracle, executor.search([oracle_texts[i] for i in with_oracle], request.dev_oracle_k), strict=True)
    )
    dev_rows = []
    for index, (example, hits) in enumerate(zip(splits.dev, dev_hits, strict=True)):
        oracle = oracle_hits.get(index, [])
        for hit in [*hits, *oracle]:
            passages.setdefault(hit.id, Passage(hit.id, hit.title, hit.text))
        dev_rows.append(
            {
                "example_id": example.id,
                "candidate_ids": [h.id for h in hits],
                "candidate_scores": [h.score for h in hits],
                "oracle_rationale": oracle_texts[index],
                "oracle_ids": [h.id for h in oracle],
            }
        )
    metrics = {
        **report.metrics(),
        "knowledge/train_rows": float(len(train_rows)),
        "knowledge/dev_rows": float(len(dev_rows)),
        "knowledge/dev_with_oracle": float(len(with_oracle)),
        "knowledge/passages": float(len(passages)),
        f"knowledge/train_question_recall_at_{k}": question_recall / len(train_rows),
        "knowledge/build_seconds": time.monotonic() - started,
        **dev_bm25_recall(dev_rows, cfg.method.reranker.eval_k, k),
    }
    manifest = {"key": request.key, "request": asdict(request), "metrics": metrics, "created": time.time()}
    _write(out, train_rows, dev_rows, list(passages.values()), manifest)
    return KnowledgeBuild(out, False, manifest)


def dev_bm25_recall(dev_rows: Sequence[dict[str, Any]], cutoffs: Sequence[int], targets_k: int) -> dict[str, float]:
    """recall@k of the passages the gold rationale retrieves (top targets_k) among BM25's question hits."""
    rows = [r for r in dev_rows if r["oracle_ids"]]
    if not rows:
        return {}
    return {
        f"retrieval/bm25_recall_at_{k}": sum(_recall(r["oracle_ids"][:targets_k], r["candidate_ids"], k) for r in rows)
        / len(rows)
        for k in cutoffs
    }


def _write(
    out: Path,
    train_rows: list[dict[str, Any]],
    dev_rows: list[dict[str, Any]],
    passages: list[Passage],
    manifest: dict[str, Any],
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        DatasetDict(
            {
                "train": Dataset.from_list(train_rows),
                "dev": Dataset.from_list(dev_rows),
                "passages": Dataset.from_list([asdict(p) for p in passages]),
            }
        ).save_to_disk(str(staging))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            staging.rename(out)
        except OSError:  # another builder finished the same key first: theirs is as good as ours
            if not (out / MANIFEST).is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
