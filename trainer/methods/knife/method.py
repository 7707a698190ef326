"""KNIFE (Chan et al.): a teacher that reads input + free-text rationale (FTR) through a masked decoder,
and an input-only student whose encoder and decoder states are aligned with the frozen teacher's."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from trainer.config.schema import ExperimentConfig
from trainer.data.example import DataError, QAExample
from trainer.data.formatting import format_answer, format_question
from trainer.evaluation.protocols import Batch, Features
from trainer.methods.knife import KnifeConfig, KnifeStudentSection
from trainer.methods.knife.collate import build_knife_features, collate_knife
from trainer.methods.registry import section_of
from trainer.methods.seq2seq import Seq2SeqMethod
from trainer.models.sources import resolve_model_source
from trainer.models.t5_knife import encode, student_forward, teacher_forward
from trainer.objectives.distillation import layerwise_alignment, masked_kl
from trainer.objectives.task import token_cross_entropy
from trainer.strategy.protocols import MethodSetupContext
from trainer.tracking.mlflow_tracker import resolve_tracking_uri


class _KnifeLayout(Seq2SeqMethod):
    """Both KNIFE stages share the aligned teacher/student batch layout of trainer.methods.knife.collate."""

    uses_rationales = True

    def knife_features(self, example: QAExample, rationale: str | None, with_labels: bool) -> Features:
        data = self.cfg.data
        input_ids = self.encode(format_question(example), data.max_input_length)
        ftr_ids = self.encode(rationale, data.max_rationale_length) if rationale else []
        labels = self.encode(format_answer(example), data.max_target_length) if with_labels else []
        return build_knife_features(input_ids, ftr_ids, labels, data.max_input_length + data.max_rationale_length)

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        return [self.knife_features(example, ftr, with_labels=True) for ftr in self.rationales(example, rng)]

    def collate(self, features: list[Features]) -> Batch:
        return collate_knife(features, self.tokenizer.pad_token_id)


class KnifeTeacher(_KnifeLayout):
    """Teacher: encoder reads input + FTR; decoder cross-attends only the input positions; task loss.

    It is evaluated with the FTR in its input (the first rationale of the configured source).
    """

    name = "knife_teacher"

    def eval_features(self, example: QAExample) -> Features:
        ftrs = self.rationales(example, random.Random(0))
        return self.knife_features(example, ftrs[0] if ftrs else None, with_labels=False)

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        states = teacher_forward(
            model,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_cross_attention_mask"],
            labels=batch["labels"],
            output_hidden_states=False,
        )
        task = token_cross_entropy(states.logits, batch["labels"])
        return {"loss": task, "task_loss": task.detach()}

    def encoder_pass(self, model: torch.nn.Module, batch: Batch) -> tuple[BaseModelOutput, torch.Tensor]:
        """Encode input + FTR; the decoder cross-attends only the input positions."""
        encoder_outputs = encode(model, batch["teacher_input_ids"], batch["teacher_attention_mask"])
        return encoder_outputs, batch["teacher_cross_attention_mask"]

    def check_eval_examples(self, examples: Sequence[QAExample]) -> None:
        """The teacher answers from input + FTR: a dev set without FTRs would silently test something else."""
        missing = [ex.id for ex in examples if not self.rationales(ex, random.Random(0))]
        if missing:
            raise DataError(
                f"knife_teacher reads a free-text rationale at evaluation, but {len(missing)} of {len(examples)} "
                f"dev examples have none for data.rationale_source={self.cfg.data.rationale_source!r} "
                f"(first: {missing[0]!r}); evaluate the teacher on a dev set with rationales"
            )


class KnifeStudent(_KnifeLayout):
    """Student: input only; loss = λ_task·task + λ_in·KD-in (encoder states on input tokens)
    + λ_out·KD-out (decoder states on answer tokens, MSE; or KL on output distributions).
    Each part is reported unweighted (`task_loss`, `kd_in_loss`, `kd_out_loss`) and λ-weighted (`*_weighted`);
    the loop logs the window mean of each as `train/<name>`.

    A teacher wider than the student (the paper's T5-Large → T5-Base) works when only output distributions are
    aligned (output_loss=kl, lambda_in=0), or with `method.knife.projection`: a learned linear map per aligned stack
    (encoder, decoder) from the student's width to the teacher's, shared by that stack's aligned layers.
    """

    name = "knife_student"
    PROJECTION = "knife_projection"  # the projection's submodule name in the student (and its checkpoints)

    def __init__(self, cfg: ExperimentConfig, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        self.knife: KnifeConfig = section_of(cfg, KnifeStudentSection).knife
        self.teacher: torch.nn.Module | None = None
        self.projection: torch.nn.ModuleDict | None = None

    @classmethod
    def tokenizer_source(cls, cfg: ExperimentConfig) -> str | None:
        """Aligned positions and output distributions need the teacher's vocabulary."""
        return cfg.model.tokenizer or cls._teacher_source(cfg)

    @staticmethod
    def _teacher_source(cfg: ExperimentConfig) -> str:
        teacher = section_of(cfg, KnifeStudentSection).knife.teacher
        if not teacher:
            raise ValueError("method.knife.teacher: the KNIFE student needs a teacher model (path or runs:/ URI)")
        return teacher

    def _aligned_stacks(self) -> list[str]:
        """The stacks whose hidden states are matched with the teacher's (MSE), as opposed to logits (KL)."""
        knife = self.knife
        return [
            stack
            for stack, aligned in (
                ("encoder", knife.lambda_in > 0),
                ("decoder", knife.lambda_out > 0 and knife.output_loss == "mse"),
            )
            if aligned
        ]

    def _check_teacher(self, teacher_config: PretrainedConfig, model_config: PretrainedConfig) -> None:
        knife = self.knife
        teacher_width, student_width = teacher_config.d_model, model_config.d_model
        if knife.projection and not self._aligned_stacks():
            raise ValueError(
                "method.knife.projection=true, but no hidden states are aligned (lambda_in=0, and lambda_out=0 or "
                "output_loss=kl): there is nothing to project; set method.knife.projection=false"
            )
        if teacher_width != student_width and self._aligned_stacks() and not knife.projection:
            raise ValueError(
                f"method.knife.teacher: teacher d_model {teacher_width} != student d_model {student_width}; aligning "
                "hidden states needs equal widths. Set method.knife.projection=true to learn a student→teacher "
                "projection, or align output distributions only: method.knife.output_loss=kl method.knife.lambda_in=0"
            )
        if knife.lambda_out > 0 and knife.output_loss == "kl" and teacher_config.vocab_size != model_config.vocab_size:
            raise ValueError(
                f"method.knife.teacher: teacher vocab_size {teacher_config.vocab_size} != student vocab_size "
                f"{model_config.vocab_size}; output_loss=kl compares distributions over one vocabulary"
            )

    def setup(self, strategy: MethodSetupContext, model_config: PretrainedConfig) -> None:
        """Load the frozen teacher (partitioned as it loads under ZeRO-3) after checking it fits the student, and
        create the student→teacher projection when one is configured."""
        source = resolve_model_source(self._teacher_source(self.cfg), resolve_tracking_uri(self.cfg.tracking))
        teacher_config = AutoConfig.from_pretrained(source)
        self._check_teacher(teacher_config, model_config)
        if self.knife.projection:
            self.projection = torch.nn.ModuleDict(
                {
                    stack: torch.nn.Linear(model_config.d_model, teacher_config.d_model, bias=False)
                    for stack in self._aligned_stacks()
                }
            )
        ds_config = strategy.frozen_config(teacher_config.d_model, self.knife.teacher_zero_stage)
        with strategy.partitioned_init(ds_config):
            teacher = AutoModelForSeq2SeqLM.from_pretrained(source, config=teacher_config)
        self.teacher = strategy.prepare_frozen(teacher, ds_config)

    def auxiliary_modules(self) -> dict[str, torch.nn.Module]:
        return {self.PROJECTION: self.projection} if self.projection is not None else {}

    def _projection(self, stack: str) -> torch.nn.Module | None:
        return self.projection[stack] if self.projection is not None else None

    def eval_features(self, example: QAExample) -> Features:
        return self.knife_features(example, None, with_labels=False)

    def encoder_pass(self, model: torch.nn.Module, batch: Batch) -> tuple[BaseModelOutput, torch.Tensor]:
        return encode(model, batch["student_input_ids"], batch["student_attention_mask"]), batch[
            "student_attention_mask"
        ]

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        knife = self.knife
        labels = batch["labels"]
        student = student_forward(model, batch["student_input_ids"], batch["student_attention_mask"], labels=labels)
        assert self.teacher is not None, "setup() loads the teacher before training"
        with torch.no_grad():
            teacher = teacher_forward(
                self.teacher,
                batch["teacher_input_ids"],
                batch["teacher_attention_mask"],
                batch["teacher_cross_attention_mask"],
                labels=labels,
            )
        task = token_cross_entropy(student.logits, labels)
        zero = task.new_zeros(())
        width = batch["student_input_ids"].shape[1]
        kd_in = zero
        if knife.lambda_in > 0:
            teacher_inputs = [states[:, :width] for states in teacher.encoder_hidden_states]
            kd_in = layerwise_alignment(
                student.encoder_hidden_states,
                teacher_inputs,
                batch["input_alignment_mask"],
                knife.encoder_layers,
                project=self._projection("encoder"),
            )
        kd_out = zero
        if knife.lambda_out > 0:
            if knife.output_loss == "kl":
                kd_out = masked_kl(student.logits, teacher.logits, batch["decoder_mask"], knife.kl_temperature)
            else:
                kd_out = layerwise_alignment(
                    student.decoder_hidden_states,
                    teacher.decoder_hidden_states,
                    batch["decoder_mask"],
                    knife.decoder_layers,
                    project=self._projection("decoder"),
                )
        weighted = {
            "task_loss": knife.lambda_task * task,
            "kd_in_loss": knife.lambda_in * kd_in,
            "kd_out_loss": knife.lambda_out * kd_out,
        }
        # Unweighted magnitudes and their λ-weighted shares, so λ choices can be judged from the logged metrics.
        return {
            "loss": sum(weighted.values(), zero),
            "task_loss": task.detach(),
            "kd_in_loss": kd_in.detach(),
            "kd_out_loss": kd_out.detach(),
            **{f"{name}_weighted": part.detach() for name, part in weighted.items()},
        }
