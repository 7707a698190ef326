"""Plain fine-tuning baselines: I→O (answer), I→OR (answer, then rationale), I→RO (rationale, then answer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from trainer.config.sections import MethodSection
from trainer.methods.registry import SequenceLengths, register_method

if TYPE_CHECKING:
    from trainer.config.schema import ExperimentConfig

IMPLEMENTATION = "trainer.methods.finetune.method"


def answer_and_rationale_lengths(cfg: ExperimentConfig) -> SequenceLengths:
    """The target holds the answer and the rationale."""
    data = cfg.data
    return SequenceLengths(data.max_input_length, data.max_target_length + data.max_rationale_length)


@register_method(implementation=f"{IMPLEMENTATION}:FinetuneIO", summary="fine-tuning: input → answer")
class FinetuneIOSection(MethodSection):
    name: Literal["ft_io"] = "ft_io"


@register_method(
    implementation=f"{IMPLEMENTATION}:FinetuneIOR",
    summary="fine-tuning: input → answer, then the rationale",
    sequence_lengths=answer_and_rationale_lengths,
)
class FinetuneIORSection(MethodSection):
    name: Literal["ft_ior"] = "ft_ior"


@register_method(
    implementation=f"{IMPLEMENTATION}:FinetuneIRO",
    summary="fine-tuning: input → the rationale, then the answer",
    sequence_lengths=answer_and_rationale_lengths,
)
class FinetuneIROSection(MethodSection):
    name: Literal["ft_iro"] = "ft_iro"
