"""What a training method is: how it turns examples into features, its loss, and how it answers."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from trainer.config.schema import ExperimentConfig
from trainer.data.collate import pad_batch
from trainer.data.example import QAExample
from trainer.data.formatting import parse_choice
from trainer.data.rationales import select_rationales
from trainer.objectives.task import token_cross_entropy

Features = dict[str, Any]
Batch = dict[str, torch.Tensor]


class Method(ABC):
    """A named training recipe (config `method.name`); subclasses register in trainer.methods.registry."""

    name: ClassVar[str]
    uses_rationales: ClassVar[bool] = False

    def __init__(self, cfg: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer

    @classmethod
    def tokenizer_source(cls, cfg: ExperimentConfig) -> str | None:
        """Where the tokenizer comes from when it is not the model's own (KNIFE's student: the teacher's)."""
        return cfg.model.tokenizer

    def collate(self, features: list[Features]) -> Batch:
        return pad_batch(features, self.tokenizer.pad_token_id)

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids ending in EOS, truncated to max_length (EOS kept)."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + [self.tokenizer.eos_token_id]
        return ids

    def rationales(self, example: QAExample, rng: random.Random) -> list[str]:
        return select_rationales(example, self.cfg.data.rationale_source, rng)

    @abstractmethod
    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        """Zero or more training features for one example (zero: it lacks what the method needs)."""

    @abstractmethod
    def eval_features(self, example: QAExample) -> Features:
        """Encoder inputs for answering one dev example."""

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """`loss` to optimise plus named parts to log; default: task cross-entropy on `labels`."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        task = token_cross_entropy(out.logits, batch["labels"])
        return {"loss": task, "task_loss": task.detach()}

    def generate(self, model: torch.nn.Module, batch: Batch, **kwargs: Any) -> torch.Tensor:
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)

    def max_new_tokens(self) -> int:
        return self.cfg.data.max_target_length

    def parse(self, text: str, example: QAExample) -> int | None:
        return parse_choice(text, example.choices)

    def setup(self, strategy: Any, model_config: PretrainedConfig) -> None:  # noqa: B027 - most need nothing
        """Load anything beyond the trained model (KNIFE's frozen teacher) once the process group exists."""


def encoder_inputs(method: Method, source: str) -> Features:
    """The task input as encoder features (what generation needs)."""
    input_ids = method.encode(source, method.cfg.data.max_input_length)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}


def simple_feature(method: Method, source: str, target: str, max_target: int) -> Features:
    """Encoder inputs plus a target sequence as labels."""
    return {**encoder_inputs(method, source), "labels": method.encode(target, max_target)}
