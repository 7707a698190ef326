"""What evaluation needs from a method, and what every evaluation gives back, as protocols this package owns:
methods implement them, and nothing here imports a method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from trainer.data.example import QAExample

Features = dict[str, Any]
Batch = dict[str, torch.Tensor]


class Evaluation(Protocol):
    """A dev evaluation's outcome: metrics, what model selection maximises, and per-question records."""

    @property
    def selection_metric(self) -> str:
        """The metric (without `dev/`) that model selection (run.eval_every) maximises."""
        ...

    @property
    def selection_score(self) -> float: ...

    def metrics(self, prefix: str = "dev") -> dict[str, float]: ...

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per question (predictions/dev.jsonl)."""
        ...

    def table_rows(self) -> list[dict[str, Any]]:
        """One flat row per question (MLflow's table view)."""
        ...


class AnswerScoringTask(Protocol):
    """A seq2seq method as choice-scoring evaluation (trainer.evaluation.evaluator) reads it: how it encodes a
    dev question, where its generations hold the answer, and what its target writes around the answer."""

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    def eval_features(self, example: QAExample) -> Features: ...

    def collate(self, features: list[Features]) -> Batch: ...

    def encoder_pass(self, model: torch.nn.Module, batch: Batch) -> tuple[BaseModelOutput, torch.Tensor]:
        """Encoder states and the mask the decoder cross-attends through, shared by every decoding of a batch."""
        ...

    def max_new_tokens(self) -> int: ...

    def encode_plain(self, text: str) -> list[int]: ...

    def scoring_prefix(self, generated: str) -> str:
        """What the decoder writes before the answer; choices are scored after it."""
        ...

    def choice_continuations(self, example: QAExample) -> list[list[int]]: ...

    def parse(self, text: str, example: QAExample) -> int | None:
        """The choice a generation names, or None."""
        ...

    def eval_details(self, example: QAExample) -> dict[str, Any]: ...

    def check_eval_examples(self, examples: Sequence[QAExample]) -> None: ...
