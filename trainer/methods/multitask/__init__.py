"""Distilling step-by-step (Hsieh et al. 2023): one input, an answer task and a rationale task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainer.config.sections import MethodSection
from trainer.methods.registry import SequenceLengths, register_method

if TYPE_CHECKING:
    from trainer.config.schema import ExperimentConfig


def answer_or_rationale_lengths(cfg: ExperimentConfig) -> SequenceLengths:
    """Each decoder row is an answer or a rationale."""
    data = cfg.data
    return SequenceLengths(data.max_input_length, max(data.max_target_length, data.max_rationale_length))


@register_method(
    implementation="trainer.methods.multitask.method:StepByStepMultitask",
    summary="step-by-step multitask: α·answer + (1−α)·rationale",
    sequence_lengths=answer_or_rationale_lengths,
)
class MultitaskSection(MethodSection):
    name: Literal["multitask"] = "multitask"
    multitask_alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="weight of the answer task")
