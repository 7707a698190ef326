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

from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk

from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.registry import DatasetSplits
from trainer.evaluation.ranking import recall_at
from trainer.kard.prompt import Passage
from trainer.kard.rationale_filter import (
    KEPT,
    RationaleCandidate,
    VerifierFilter,
    filter_rationales,
    parse_filter,
)
from trainer.kard.retriever import Hit, Retriever, RetrieverSpec
from trainer.methods.kard import KardSections
from trainer.methods.registry import section_of

FORMAT_VERSION = 2
MANIFEST = "knowledge.json"
_IDS, _SCORES, _TEXT = List(Value("string")), List(Value("float64")), Value("string")
SPLIT_FEATURES = {
    "train": Features(
        example_id=_TEXT, question=_TEXT, rationale_index=Value("int32"), rationale=_TEXT, passage_ids=_IDS,
        candidate_ids=_IDS, candidate_rho=_SCORES,
    ),
    "dev": Features(
        example_id=_TEXT, question=_TEXT, candidate_ids=_IDS, candidate_scores=_SCORES, oracle_rationale=_TEXT,
        oracle_ids=_IDS,
    ),
    "passages": Features(id=_TEXT, title=_TEXT, text=_TEXT),
}  # fmt: skip
Judge = Callable[[Sequence[RationaleCandidate]], list[str]]
SearchRequest = tuple[str, int]  # query, k


class QueryExecutor(Protocol):
    """Runs retrieval (and verifier) work in bulk, results in input order."""

    def search(self, requests: list[SearchRequest]) -> list[list[Hit]]: ...
    def score(self, queries: list[str], ids: list[list[str]]) -> list[dict[str, float]]: ...
    def fetch(self, ids: list[str]) -> dict[str, Passage]: ...
    def verify(self, candidates: Sequence[RationaleCandidate]) -> list[str]: ...


def batched(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def search_grouped(retriever: Retriever, requests: list[SearchRequest], batch_size: int) -> list[list[Hit]]:
    """search_batch calls per distinct k, answers back in request order."""
    answers: list[list[Hit]] = [[] for _ in requests]
    by_k: dict[int, list[int]] = {}
    for index, (_, k) in enumerate(requests):
        by_k.setdefault(k, []).append(index)
    for k, indices in by_k.items():
        for chunk in batched(indices, batch_size):
            for index, hits in zip(chunk, retriever.search_batch([requests[i][0] for i in chunk], k), strict=True):
                answers[index] = hits
    return answers


class LocalQueries:
    """The executor for one process: batches through a Retriever, verifies with a model on this machine."""

    def __init__(self, spec: RetrieverSpec, verifier: str | None = None) -> None:
        self.spec = spec
        self.verifier_source = verifier

    @functools.cached_property
    def retriever(self) -> Retriever:
        return self.spec.open()

    def search(self, requests: list[SearchRequest]) -> list[list[Hit]]:
        return search_grouped(self.retriever, requests, self.spec.batch_size)

    def score(self, queries: list[str], ids: list[list[str]]) -> list[dict[str, float]]:
        size = self.spec.batch_size
        return [
            row
            for q, i in zip(batched(queries, size), batched(ids, size), strict=True)
            for row in self.retriever.score_batch(q, i)
        ]

    def fetch(self, ids: list[str]) -> dict[str, Passage]:
        found: dict[str, Passage] = {}
        for chunk in batched(ids, self.spec.batch_size):
            found.update({d.id: Passage(d.id, d.title, d.text) for d in self.retriever.get(chunk).values()})
        return found

    def verify(self, candidates: Sequence[RationaleCandidate]) -> list[str]:
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
        sections = section_of(cfg, KardSections)
        kard, reranker = sections.kard, sections.reranker
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
    question: str
    rationale_index: int
    rationale: str
    passage_ids: list[str]
    candidate_ids: list[str]
    candidate_rho: list[float]


@dataclass(frozen=True)
class DevKnowledge:
    example_id: str
    question: str
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

    @property
    def version(self) -> str:
        """This build of the dataset (its key and build time): a rebuild at the same path is a new version."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def lookup(self, ids: Sequence[str]) -> list[Passage]:
        return [self.passages[i] for i in ids]

    def check_covers(self, examples: Sequence[QAExample]) -> None:
        """Dev knowledge built for other questions would silently give wrong passages: refuse it (ids and text)."""
        missing = [ex.id for ex in examples if ex.id not in self.dev or self.dev[ex.id].question != ex.question]
        if missing:
            raise DataError(
                f"method.kard.knowledge: {self.path} has no dev knowledge for {len(missing)} of {len(examples)} "
                f"dev questions (first: {missing[0]!r}); it was built for another dataset or split"
            )

    def train_rows(self, example: QAExample) -> list[TrainKnowledge]:
        """The kept rationales of a training question (none when the filter dropped them all)."""
        rows = self.train.get(example.id, [])
        if rows and rows[0].question != example.question:
            raise DataError(
                f"method.kard.knowledge: {self.path} holds another question under id {example.id!r}; "
                "it was built for another dataset"
            )
        return rows


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
    oracle_texts = [_oracle_rationale(ex) for ex in splits.dev]
    with_oracle = [i for i, text in enumerate(oracle_texts) if text]
    # Every search of the build in one bulk call (one Ray Data pass), sliced back per purpose below.
    searches = (
        [(c.text, max(k, per_query)) for c in kept]
        + [(question_query(ex), per_query) for ex in splits.train]
        + [(question_query(ex), request.dev_candidates) for ex in splits.dev]
        + [(oracle_texts[i], request.dev_oracle_k) for i in with_oracle]
    )
    answers = iter(executor.search(searches))
    rationale_hits = [next(answers) for _ in kept]
    question_hits = {ex.id: next(answers) for ex in splits.train}
    dev_hits = [next(answers) for _ in splits.dev]
    oracle_hits = {i: next(answers) for i in with_oracle}
    only_by_question = []
    for hits_r, candidate in zip(rationale_hits, kept, strict=True):
        seen = {i for i, _ in hits_r}
        only_by_question.append([i for i, _ in question_hits[candidate.example.id] if i not in seen])
    extra_rho = executor.score([c.text for c in kept], only_by_question)
    train_rows: list[dict[str, Any]] = []
    question_recall = 0.0
    for candidate, hits_r, q_only, rho_q in zip(kept, rationale_hits, only_by_question, extra_rho, strict=True):
        rho = dict(hits_r[:per_query])
        rho.update({i: rho_q.get(i, 0.0) for i in q_only})
        top = [i for i, _ in hits_r[:k]]
        if top:
            question_recall += recall_at(top, [i for i, _ in question_hits[candidate.example.id]], k)
        train_rows.append(
            {
                "example_id": candidate.example.id,
                "question": candidate.example.question,
                "rationale_index": candidate.index,
                "rationale": candidate.text,
                "passage_ids": top,
                "candidate_ids": list(rho),
                "candidate_rho": list(rho.values()),
            }
        )
    dev_rows: list[dict[str, Any]] = [
        {
            "example_id": example.id,
            "question": example.question,
            "candidate_ids": [i for i, _ in hits],
            "candidate_scores": [score for _, score in hits],
            "oracle_rationale": oracle_texts[index],
            "oracle_ids": [i for i, _ in oracle_hits.get(index, [])],
        }
        for index, (example, hits) in enumerate(zip(splits.dev, dev_hits, strict=True))
    ]
    referenced = {i for row in train_rows for i in row["candidate_ids"] + row["passage_ids"]}
    referenced |= {i for row in dev_rows for i in row["candidate_ids"] + row["oracle_ids"]}
    passages = executor.fetch(sorted(referenced))
    missing = referenced - set(passages)
    if missing:
        raise DataError(f"retrieval: {len(missing)} retrieved passages could not be fetched (first: {min(missing)!r})")
    metrics = {
        **report.metrics(),
        "knowledge/train_rows": float(len(train_rows)),
        "knowledge/dev_rows": float(len(dev_rows)),
        "knowledge/dev_with_oracle": float(len(with_oracle)),
        "knowledge/passages": float(len(passages)),
        f"knowledge/train_question_recall_at_{k}": question_recall / len(train_rows),
        "knowledge/build_seconds": time.monotonic() - started,
        **dev_bm25_recall(dev_rows, section_of(cfg, KardSections).reranker.eval_k, k),
    }
    manifest = {"key": request.key, "request": asdict(request), "metrics": metrics, "created": time.time()}
    _write(out, train_rows, dev_rows, [passages[i] for i in sorted(passages)], manifest)
    return KnowledgeBuild(out, False, manifest)


def dev_bm25_recall(dev_rows: Sequence[dict[str, Any]], cutoffs: Sequence[int], targets_k: int) -> dict[str, float]:
    """recall@k of the passages the gold rationale retrieves (top targets_k) among BM25's question hits."""
    rows = [r for r in dev_rows if r["oracle_ids"]]
    if not rows:
        return {}
    return {
        f"dev/bm25_recall_at_{k}": sum(recall_at(r["oracle_ids"][:targets_k], r["candidate_ids"], k) for r in rows)
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
        rows = {"train": train_rows, "dev": dev_rows, "passages": [asdict(p) for p in passages]}
        DatasetDict(
            {split: Dataset.from_list(rows[split], features=SPLIT_FEATURES[split]) for split in rows}
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
