"""KARD students (Kang et al.): write the LLM's rationale, then the answer, from the question plus passages.

`kard` reads the passages its knowledge dataset retrieved with each rationale at training time, and at inference
the passages `method.kard.inference` names: BM25 by question + options, those reranked by the trained reranker,
or (an upper bound) the gold rationale's. `rd` is reasoning distillation with the same prompt and targets and no
passages. Both train on the filtered rationales, one example per rationale, and answer like I→RO (the choices are
scored after the generated rationale and "answer:").
"""

from __future__ import annotations

import functools
import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PretrainedConfig

from retrieval_core.late_interaction import LateInteractionScorer, passage_text
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.evaluation.evaluator import EvalResult, EvalSettings
from trainer.evaluation.protocols import Features
from trainer.evaluation.ranking import recall_at
from trainer.evaluation.sharding import shard_and_gather
from trainer.kard.knowledge import KnowledgeBase, question_query
from trainer.kard.prompt import Passage, build_prompt_ids
from trainer.kard.rationale_filter import KEPT, RationaleCandidate, parse_filter
from trainer.methods.finetune.method import FinetuneIRO
from trainer.methods.kard import KardSections
from trainer.methods.registry import section_of
from trainer.models.sources import resolve_model_source
from trainer.strategy.protocols import DistributedContext, MethodSetupContext
from trainer.tracking.mlflow_tracker import resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset


class KardStudent(FinetuneIRO):
    """Instruction + question + options + passages → `explanation: <rationale> answer: <choice>`."""

    name = "kard"
    reads_passages = True

    def __init__(self, cfg: ExperimentConfig, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        sections = section_of(cfg, KardSections)
        self.kard, self.reranker_settings = sections.kard, sections.reranker
        self.knowledge: KnowledgeBase | None = None
        self.dev_passages: dict[str, list[Passage]] = {}
        self.retrieval_metrics: dict[str, float] = {}

    def setup(self, strategy: MethodSetupContext, model_config: PretrainedConfig) -> None:
        path = self.kard.knowledge
        if path:
            self.knowledge = KnowledgeBase(Path(path))
        elif self.reads_passages:
            raise DataError(
                "method.kard.knowledge: the KARD student reads a knowledge dataset; run a pipeline `knowledge` "
                "stage first (ray_jobs/configs/kard_*.yaml) or point this at one"
            )
        elif self.cfg.data.rationale_filter == "verifier":
            raise DataError(
                "data.rationale_filter=verifier runs in a pipeline `knowledge` stage; set method.kard.knowledge"
            )

    # ---- features --------------------------------------------------------------------------------------
    def prompt_ids(self, example: QAExample, passages: list[Passage]) -> list[int]:
        """The one prompt contract (trainer.kard.prompt), for training and inference alike."""
        return build_prompt_ids(
            self.encode_plain,
            self.tokenizer.eos_token_id,
            self.kard.instruction,
            example,
            passages,
            self.cfg.data.max_input_length,
        )

    def _training_pairs(self, example: QAExample, rng: random.Random) -> list[tuple[str, list[Passage]]]:
        """(rationale, passages) per kept rationale: from the knowledge dataset, or (rd alone) the example itself."""
        k = self.kard.train_passages if self.reads_passages else 0
        if self.knowledge is not None:
            return [
                (row.rationale, self.knowledge.lookup(row.passage_ids[:k]))
                for row in self.knowledge.train_rows(example)
            ]
        rationales = self.rationales(example, rng)
        if self.cfg.data.rationale_filter == "parse":
            candidates = [RationaleCandidate(example, i, r) for i, r in enumerate(rationales)]
            verdicts = parse_filter(candidates, self.cfg.data.keep_unstated_rationales)
            rationales = [c.text for c, verdict in zip(candidates, verdicts, strict=True) if verdict == KEPT]
        return [(r, []) for r in rationales]

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        features = []
        for rationale, passages in self._training_pairs(example, rng):
            input_ids = self.prompt_ids(example, passages)
            labels = self.encode(self.target(example, rationale), self.max_new_tokens())
            features.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
        return features

    def feature_fingerprint(self) -> dict[str, Any]:
        """Training features read the knowledge dataset: its version is part of their identity."""
        return {**super().feature_fingerprint(), "knowledge": self.knowledge.version if self.knowledge else None}

    def eval_features(self, example: QAExample) -> Features:
        input_ids = self.prompt_ids(example, self.dev_passages.get(example.id, []))
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}

    def eval_details(self, example: QAExample) -> dict[str, Any]:
        return {"passages": [f"{p.id} | {p.title}. {p.text}" for p in self.dev_passages.get(example.id, [])]}

    # ---- inference-time knowledge -----------------------------------------------------------------------
    @functools.cached_property
    def reranker(self) -> LateInteractionScorer:
        source = self.kard.reranker
        if not source:
            raise DataError("method.kard.reranker: inference=reranker needs a reranker model (dir or runs:/ URI)")
        directory = resolve_model_source(source, resolve_tracking_uri(self.cfg.tracking))
        return LateInteractionScorer(directory, batch_size=self.kard.reranker_batch_size)

    def _ranking(self, example: QAExample) -> list[str]:
        """Passage ids in the order the configured inference source ranks them for this dev question."""
        assert self.knowledge is not None
        row = self.knowledge.dev[example.id]
        mode = self.kard.inference
        if mode == "oracle":
            return list(row.oracle_ids)
        candidates = list(row.candidate_ids[: self.kard.candidates])
        if mode == "reranker":
            texts = [passage_text(p.title, p.text) for p in self.knowledge.lookup(candidates)]
            return [candidates[i] for i in self.reranker.rerank(question_query(example), texts, len(texts))]
        return candidates

    def prepare_evaluation(self, strategy: DistributedContext, examples: list[QAExample]) -> None:
        """Rank every dev question's passages once (each rank reranks a strided shard), then keep the top k."""
        kard = self.kard
        if not self.reads_passages or kard.inference == "none":
            return
        assert self.knowledge is not None
        self.knowledge.check_covers(examples)
        ranked = shard_and_gather(examples, strategy, lambda shard: [self._ranking(ex) for ex in shard])
        rankings = {ex.id: ranking for ex, ranking in zip(examples, ranked, strict=True)}
        self.dev_passages = {i: self.knowledge.lookup(r[: kard.inference_passages]) for i, r in rankings.items()}
        targets_k = max(1, kard.train_passages)
        judged = [(self.knowledge.dev[i].oracle_ids[:targets_k], r) for i, r in rankings.items()]
        judged = [(t, r) for t, r in judged if t]
        self.retrieval_metrics = {
            f"{kard.inference}_recall_at_{k}": sum(recall_at(t, r, k) for t, r in judged) / len(judged)
            for k in self.reranker_settings.eval_k
            if judged
        }

    def evaluate(
        self,
        model: torch.nn.Module,
        examples: list[QAExample],
        strategy: DistributedContext,
        settings: EvalSettings,
        generation_kwargs: dict[str, Any],
    ) -> EvalResult:
        result = super().evaluate(model, examples, strategy, settings, generation_kwargs)
        return replace(result, extra_metrics={**result.extra_metrics, **self.retrieval_metrics})

    def logged_inputs(self) -> list[tuple[Dataset, str]]:
        if self.knowledge is None:
            return []
        return [(knowledge_dataset(self.knowledge), "training")]


class ReasoningDistillation(KardStudent):
    """RD: the same prompt and rationale targets as KARD, without passages."""

    name = "rd"
    reads_passages = False


def knowledge_dataset(knowledge: KnowledgeBase) -> Dataset:
    """The knowledge dataset as an MLflow dataset: named by its cache key, so runs on the same one line up."""
    from mlflow.data.huggingface_dataset import from_huggingface  # MLflow loads when tracking does

    return from_huggingface(
        knowledge.dataset["train"], path=str(knowledge.path), name=f"kard-knowledge-{knowledge.key}"
    )
