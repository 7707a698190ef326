"""KNIFE (Chan et al.): a teacher reads input + free-text rationale (FTR) through a decoder kept from attending
to the FTR; an input-only student is aligned with the frozen teacher's encoder and decoder states."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainer.config.fields import ModelSource
from trainer.config.sections import MethodSection, Section
from trainer.methods.registry import FrozenModel, SequenceLengths, StageReference, register_method, section_of

if TYPE_CHECKING:
    from trainer.config.schema import ExperimentConfig

IMPLEMENTATION = "trainer.methods.knife.method"


class KnifeConfig(Section):
    """KNIFE student distillation knobs (Chan et al.)."""

    teacher: ModelSource = Field(
        default=None, description="teacher model: an exported model dir, or runs:/<run_id>/... MLflow URI"
    )
    lambda_in: float = Field(default=1.0, ge=0.0)
    lambda_out: float = Field(default=1.0, ge=0.0)
    lambda_task: float = Field(default=1.0, ge=0.0)
    encoder_layers: list[int] = Field(default_factory=lambda: [-1])
    decoder_layers: list[int] = Field(default_factory=lambda: [-1])
    output_loss: Literal["mse", "kl"] = "mse"
    kl_temperature: float = Field(default=1.0, gt=0.0)
    projection: bool = Field(
        default=False,
        description="align hidden states through a learned linear map from the student's width to the teacher's "
        "(a wider teacher, e.g. T5-Large -> T5-Base); trained and checkpointed with the student, never exported",
    )
    teacher_zero_stage: Literal[0, 3] = 3


def input_and_rationale_lengths(cfg: ExperimentConfig) -> SequenceLengths:
    """The teacher's encoder reads the input and the FTR; its decoder writes the answer."""
    data = cfg.data
    return SequenceLengths(data.max_input_length + data.max_rationale_length, data.max_target_length)


def frozen_teacher(cfg: ExperimentConfig) -> FrozenModel:
    """The frozen teacher beside the student. A pipeline wires the teacher stage's model at run time; until then
    it is planned in the student's shape (KNIFE aligns hidden states, so they share d_model)."""
    knife = section_of(cfg, KnifeStudentSection).knife
    return FrozenModel(knife.teacher, input_and_rationale_lengths(cfg), knife.teacher_zero_stage)


@register_method(
    implementation=f"{IMPLEMENTATION}:KnifeTeacher",
    summary="KNIFE teacher: input + FTR → answer, the decoder masked from the FTR",
    sequence_lengths=input_and_rationale_lengths,
)
class KnifeTeacherSection(MethodSection):
    name: Literal["knife_teacher"] = "knife_teacher"


@register_method(
    implementation=f"{IMPLEMENTATION}:KnifeStudent",
    summary="KNIFE student: input → answer, aligned with the frozen teacher's encoder and decoder states",
    references=(
        StageReference(
            "teacher",
            "train",
            "knife.teacher",
            "earlier stage whose model is the frozen teacher (method.knife.teacher)",
            tags={"knife.teacher_run_id": "mlflow_run_id", "knife.teacher_model_uri": "model_uri"},
            stage_tag="knife.teacher_stage",
        ),
    ),
    frozen_model=frozen_teacher,
)
class KnifeStudentSection(MethodSection):
    name: Literal["knife_student"] = "knife_student"
    knife: KnifeConfig = Field(default_factory=KnifeConfig)
