"""Method name (config `method.name`) → implementation."""

from __future__ import annotations

from trainer.config.schema import ExperimentConfig
from trainer.methods.base import Method
from trainer.methods.finetune import FinetuneIO, FinetuneIOR, FinetuneIRO
from trainer.methods.kard import KardStudent, ReasoningDistillation
from trainer.methods.knife import KnifeStudent, KnifeTeacher
from trainer.methods.multitask import StepByStepMultitask
from trainer.methods.reranker import KardReranker

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        FinetuneIO,
        FinetuneIOR,
        FinetuneIRO,
        StepByStepMultitask,
        KnifeTeacher,
        KnifeStudent,
        ReasoningDistillation,
        KardStudent,
        KardReranker,
    )
}


def method_class(cfg: ExperimentConfig) -> type[Method]:
    if cfg.method.name not in METHODS:
        raise ValueError(f"method.name: {cfg.method.name!r} is not implemented; known: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method.name]
