"""Distilling step-by-step (Hsieh et al. 2023): one input, two task prefixes, α·answer + (1−α)·rationale."""

from __future__ import annotations

import random

import torch

from trainer.data.collate import pad_batch
from trainer.data.example import QAExample
from trainer.data.formatting import format_answer, format_question
from trainer.evaluation.protocols import Batch, Features
from trainer.methods.multitask import MultitaskSection
from trainer.methods.registry import section_of
from trainer.methods.seq2seq import Seq2SeqMethod, encoder_inputs, simple_feature
from trainer.objectives.task import weighted_task_mixture

ANSWER_TASK, EXPLAIN_TASK = 0, 1
TASK_PREFIXES = {ANSWER_TASK: "[answer]", EXPLAIN_TASK: "[explain]"}


class StepByStepMultitask(Seq2SeqMethod):
    """Each training feature pairs an example's answer target with one of its rationale targets, so every batch
    holds both targets of each example in it, as in Hsieh et al., whose loss takes both on the same batch.
    (Separate answer and rationale features, shuffled apart, left ~22% of 16-example batches without any answer.)
    `optim.micro_batch_size` counts these pairs: a batch has twice as many decoder rows."""

    name = "multitask"
    uses_rationales = True

    def _source(self, task: int, example: QAExample) -> str:
        return f"{TASK_PREFIXES[task]} {format_question(example)}"

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        """One feature per rationale of the example (one, unless data.rationale_source=llm_all)."""
        answer = simple_feature(
            self, self._source(ANSWER_TASK, example), format_answer(example), self.cfg.data.max_target_length
        )
        return [
            {
                "answer": answer,
                "explain": simple_feature(
                    self, self._source(EXPLAIN_TASK, example), rationale, self.cfg.data.max_rationale_length
                ),
            }
            for rationale in self.rationales(example, rng)
        ]

    def eval_features(self, example: QAExample) -> Features:
        return encoder_inputs(self, self._source(ANSWER_TASK, example))

    def collate(self, features: list[Features]) -> Batch:
        """Training pairs become rows: every answer row, then every rationale row (row i and row B + i come from
        the same example), with `task_ids`. Evaluation features are plain encoder inputs and pad as they are."""
        if "answer" not in features[0]:
            return super().collate(features)
        rows = [{**f["answer"], "task_ids": ANSWER_TASK} for f in features]
        rows += [{**f["explain"], "task_ids": EXPLAIN_TASK} for f in features]
        return pad_batch(rows, self.tokenizer.pad_token_id)

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        alpha = section_of(self.cfg, MultitaskSection).multitask_alpha
        parts = weighted_task_mixture(
            out.logits, batch["labels"], batch["task_ids"], {ANSWER_TASK: alpha, EXPLAIN_TASK: 1.0 - alpha}
        )
        loss = parts[ANSWER_TASK] + parts[EXPLAIN_TASK]
        return {
            "loss": loss,
            "task_loss": parts[ANSWER_TASK].detach(),
            "rationale_loss": parts[EXPLAIN_TASK].detach(),
        }
