"""KARD's reranker as a training method: a late-interaction scorer over a pretrained encoder (LoRA on attention
query/value), trained to reproduce rationale relevance from the question alone, under the same strategy,
loop, checkpoints and tracking as the students; evaluated by recall@k of the passages the gold rationale
retrieves, beside BM25's with the question."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModel, PretrainedConfig

from retrieval_core.late_interaction import passage_text
from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.evaluation.evaluator import EvalSettings
from trainer.evaluation.protocols import Batch, Features
from trainer.evaluation.ranking import RankedPrediction, RankingEvaluation
from trainer.evaluation.sharding import shard_and_gather
from trainer.kard.knowledge import KnowledgeBase, question_query
from trainer.methods.base import Method
from trainer.methods.kard import KardSections
from trainer.methods.kard.student import knowledge_dataset
from trainer.methods.registry import section_of
from trainer.models.late_interaction import LateInteractionReranker
from trainer.models.lora import add_lora
from trainer.objectives.reranker import RelevanceDistillation
from trainer.strategy.protocols import DistributedContext, MethodSetupContext
from trainer.tracking.mlflow_tracker import RERANKER_PYFUNC

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset

LORA_TARGETS = ("query", "value")


class KardReranker(Method):
    name = "kard_reranker"
    pyfunc = RERANKER_PYFUNC

    def __init__(self, cfg: ExperimentConfig, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        sections = section_of(cfg, KardSections)
        self.kard, self.settings = sections.kard, sections.reranker
        settings = self.settings
        self.objective = RelevanceDistillation(
            settings.loss, settings.tau_target_start, settings.tau_target_end, settings.tau_model_start,
            settings.tau_model_end,
        )  # fmt: skip
        self.knowledge: KnowledgeBase | None = None
        self._passage_tokens: dict[str, list[int]] = {}

    def setup(self, strategy: MethodSetupContext, model_config: PretrainedConfig) -> None:
        if not self.kard.knowledge:
            raise DataError("method.kard.knowledge: the reranker trains on a knowledge dataset (a pipeline stage)")
        self.knowledge = KnowledgeBase(Path(self.kard.knowledge))

    def build_model(self, model_config: PretrainedConfig) -> torch.nn.Module:
        """The pretrained encoder (weights from model.name), frozen under LoRA adapters, plus a projection."""
        settings = self.settings
        assert model_config.name_or_path, "model.name: the reranker's pretrained encoder"
        encoder = AutoModel.from_pretrained(model_config.name_or_path, config=model_config)
        scale = None
        if settings.lora_rank:
            encoder.requires_grad_(False)
            add_lora(encoder, LORA_TARGETS, settings.lora_rank, settings.lora_alpha)
            scale = settings.lora_alpha / settings.lora_rank
        return LateInteractionReranker(
            encoder, settings.projection_dim, settings.max_query_length, settings.max_passage_length, scale
        )

    # ---- features ---------------------------------------------------------------------------------------
    def _query_ids(self, example: QAExample) -> list[int]:
        return self.tokenizer(
            question_query(example), truncation=True, max_length=self.settings.max_query_length
        )["input_ids"]

    def passage_tokens(self, passage_id: str) -> list[int]:
        """Token ids of a passage, tokenised once per process (features refer to passages by id)."""
        if passage_id not in self._passage_tokens:
            assert self.knowledge is not None
            passage = self.knowledge.passages[passage_id]
            self._passage_tokens[passage_id] = self.tokenizer(
                passage_text(passage.title, passage.text),
                truncation=True,
                max_length=self.settings.max_passage_length,
            )["input_ids"]
        return self._passage_tokens[passage_id]

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        """Per kept rationale: the candidate the rationale ranks first, plus others sampled from the union."""
        assert self.knowledge is not None
        size = self.settings.sampled_candidates
        features = []
        for row in self.knowledge.train_rows(example):
            if len(row.candidate_ids) < 2:
                continue
            best = max(range(len(row.candidate_ids)), key=lambda i: row.candidate_rho[i])
            others = [i for i in range(len(row.candidate_ids)) if i != best]
            chosen = [best, *rng.sample(others, min(size - 1, len(others)))]
            rng.shuffle(chosen)
            features.append(
                {
                    "query_input_ids": self._query_ids(example),
                    "passage_ids": [row.candidate_ids[i] for i in chosen],
                    "rho": [row.candidate_rho[i] for i in chosen],
                }
            )
        return features

    def feature_fingerprint(self) -> dict[str, Any]:
        """Training features read the knowledge dataset: its version is part of their identity."""
        return {**super().feature_fingerprint(), "knowledge": self.knowledge.version if self.knowledge else None}

    def collate(self, features: list[Features]) -> Batch:
        """Queries [B, Lq]; passages [B, C, Lp]; rho and a candidate mask [B, C] (rows may have fewer)."""
        pad = self.tokenizer.pad_token_id
        queries = [f["query_input_ids"] for f in features]
        passages = [[self.passage_tokens(i) for i in f["passage_ids"]] for f in features]
        width_q = max(map(len, queries))
        width_p = max(len(p) for row in passages for p in row)
        candidates = max(map(len, passages))
        query_ids = torch.full((len(features), width_q), pad, dtype=torch.long)
        passage_ids = torch.full((len(features), candidates, width_p), pad, dtype=torch.long)
        passage_mask = torch.zeros_like(passage_ids)
        rho = torch.zeros((len(features), candidates))
        candidate_mask = torch.zeros((len(features), candidates), dtype=torch.long)
        for b, (query, row, feature) in enumerate(zip(queries, passages, features, strict=True)):
            query_ids[b, : len(query)] = torch.tensor(query)
            for c, tokens in enumerate(row):
                passage_ids[b, c, : len(tokens)] = torch.tensor(tokens)
                passage_mask[b, c, : len(tokens)] = 1
            rho[b, : len(row)] = torch.tensor(feature["rho"])
            candidate_mask[b, : len(row)] = 1
        return {
            "query_input_ids": query_ids,
            "query_attention_mask": (query_ids != pad).long(),
            "passage_input_ids": passage_ids,
            "passage_attention_mask": passage_mask,
            "rho": rho,
            "candidate_mask": candidate_mask,
        }

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        scores = model(
            batch["query_input_ids"],
            batch["query_attention_mask"],
            batch["passage_input_ids"],
            batch["passage_attention_mask"],
        )
        return self.objective(scores, batch["rho"], batch["candidate_mask"], self.progress)

    # ---- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _rank(self, model: torch.nn.Module, example: QAExample, device: torch.device) -> RankedPrediction:
        assert self.knowledge is not None
        row = self.knowledge.dev[example.id]
        candidates = list(row.candidate_ids[: self.kard.candidates]) or [next(iter(self.knowledge.passages))]
        batch = self.collate(
            [{"query_input_ids": self._query_ids(example), "passage_ids": candidates, "rho": [0.0] * len(candidates)}]
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        scores = model(
            batch["query_input_ids"],
            batch["query_attention_mask"],
            batch["passage_input_ids"],
            batch["passage_attention_mask"],
        )[0].tolist()
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        cut = max(self.settings.eval_k)
        targets = list(row.oracle_ids[: max(1, self.kard.train_passages)])
        return RankedPrediction(
            example.id, targets, list(row.candidate_ids[:cut]), [candidates[i] for i in order[:cut]],
            [scores[i] for i in order[:cut]],
        )  # fmt: skip

    def evaluate(
        self,
        model: torch.nn.Module,
        examples: list[QAExample],
        strategy: DistributedContext,
        settings: EvalSettings,
        generation_kwargs: dict[str, Any],
    ) -> RankingEvaluation:
        """One forward per question on every rank (trainer.evaluation.sharding keeps ZeRO-3 ranks in lock-step)."""
        assert self.knowledge is not None
        self.knowledge.check_covers(examples)
        was_training = model.training
        model.eval()
        predictions = shard_and_gather(
            examples, strategy, lambda shard: [self._rank(model, ex, strategy.device) for ex in shard]
        )
        model.train(was_training)
        return RankingEvaluation(predictions, tuple(self.settings.eval_k))

    def logged_inputs(self) -> list[tuple[Dataset, str]]:
        return [(knowledge_dataset(self.knowledge), "training")] if self.knowledge else []
