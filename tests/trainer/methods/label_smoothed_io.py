"""A method that lives outside trainer/: I→O fine-tuning with label smoothing, optionally starting from an earlier
stage's model. Everything about it is in this one module, registered when it is imported; the test beside it
(test_method_plugin.py) trains, evaluates, plans, pipelines and renders it without touching any other file."""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig

from trainer.config.fields import ModelSource
from trainer.config.schema import ExperimentConfig
from trainer.config.sections import MethodSection, Section
from trainer.data.example import QAExample
from trainer.data.formatting import format_answer, format_question
from trainer.evaluation.protocols import Batch, Features
from trainer.methods.registry import SequenceLengths, StageReference, register_method, section_of
from trainer.methods.seq2seq import Seq2SeqMethod, encoder_inputs, simple_feature
from trainer.models.sources import resolve_model_source
from trainer.tracking.mlflow_tracker import resolve_tracking_uri


class SmoothingConfig(Section):
    epsilon: float = Field(default=0.1, ge=0.0, lt=1.0, description="label smoothing")
    init: ModelSource = Field(default=None, description="start from this model instead of model.name's")


def lengths(cfg: ExperimentConfig) -> SequenceLengths:
    """Declared to the planner: the input, and room for the answer plus one token."""
    return SequenceLengths(cfg.data.max_input_length, cfg.data.max_target_length + 1)


class LabelSmoothedIO(Seq2SeqMethod):
    name = "io_label_smoothed"

    def __init__(self, cfg: ExperimentConfig, tokenizer: object) -> None:
        super().__init__(cfg, tokenizer)  # type: ignore[arg-type]
        self.smoothing = section_of(cfg, LabelSmoothedIOSection).smoothing

    def build_model(self, model_config: PretrainedConfig) -> torch.nn.Module:
        if self.smoothing.init is None:
            return super().build_model(model_config)
        return AutoModelForSeq2SeqLM.from_pretrained(
            resolve_model_source(self.smoothing.init, resolve_tracking_uri(self.cfg.tracking))
        )

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        return [simple_feature(self, format_question(example), format_answer(example), self.cfg.data.max_target_length)]

    def eval_features(self, example: QAExample) -> Features:
        return encoder_inputs(self, format_question(example))

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        logits = out.logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, label_smoothing=self.smoothing.epsilon
        )
        return {"loss": loss, "task_loss": loss.detach()}


@register_method(
    implementation=lambda: LabelSmoothedIO,
    summary="I→O fine-tuning with label smoothing",
    references=(
        StageReference("init_from", "train", "smoothing.init", "earlier stage whose model this one starts from"),
    ),
    sequence_lengths=lengths,
    headline="dev/generation_accuracy",
)
class LabelSmoothedIOSection(MethodSection):
    name: Literal["io_label_smoothed"] = "io_label_smoothed"
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
