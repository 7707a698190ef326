"""Distilling step-by-step (Hsieh et al. 2023): one input, two task prefixes, α·answer + (1−α)·rationale."""

from __future__ import annotations

import random

import torch

from trainer.data.example import QAExample
from trainer.data.formatting import format_answer, format_question
from trainer.methods.base import Batch, Features, Method, encoder_inputs, simple_feature
from trainer.objectives.task import weighted_task_mixture

ANSWER_TASK, EXPLAIN_TASK = 0, 1
TASK_PREFIXES = {ANSWER_TASK: "[answer]", EXPLAIN_TASK: "[explain]"}


class StepByStepMultitask(Method):
    name = "multitask"
    uses_rationales = True

    def _source(self, task: int, example: QAExample) -> str:
        return f"{TASK_PREFIXES[task]} {format_question(example)}"

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        rationales = self.rationales(example, rng)
        if not rationales:
            return []
        answer = simple_feature(
            self, self._source(ANSWER_TASK, example), format_answer(example), self.cfg.data.max_target_length
        )
        features = [{**answer, "task_ids": ANSWER_TASK}]
        for rationale in rationales:
            explain = simple_feature(
                self, self._source(EXPLAIN_TASK, example), rationale, self.cfg.data.max_rationale_length
            )
            features.append({**explain, "task_ids": EXPLAIN_TASK})
        return features

    def eval_features(self, example: QAExample) -> Features:
        return encoder_inputs(self, self._source(ANSWER_TASK, example))

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        alpha = self.cfg.method.multitask_alpha
        parts = weighted_task_mixture(
            out.logits, batch["labels"], batch["task_ids"], {ANSWER_TASK: alpha, EXPLAIN_TASK: 1.0 - alpha}
        )
        loss = parts[ANSWER_TASK] + parts[EXPLAIN_TASK]
        return {
            "loss": loss,
            "task_loss": parts[ANSWER_TASK].detach(),
            "rationale_loss": parts[EXPLAIN_TASK].detach(),
        }
