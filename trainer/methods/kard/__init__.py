"""KARD (Kang et al.): students that write an LLM's rationale, then the answer, from the question plus passages
retrieved from a knowledge base, and a neural reranker trained with the rationale as relevance signal.

Methods: `kard` (the student), `rd` (reasoning distillation: the same prompt and targets without passages) and
`kard_reranker`. The knowledge they read is built by a pipeline `knowledge` stage (trainer.kard.knowledge).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainer.config.fields import LocalPath, ModelSource
from trainer.config.sections import MethodSection, Section
from trainer.methods.registry import SequenceLengths, StageReference, register_method, section_of

if TYPE_CHECKING:
    from trainer.config.schema import ExperimentConfig


class KardConfig(Section):
    """KARD student (Kang et al.): rationale generation from the question plus retrieved passages."""

    knowledge: LocalPath = Field(
        default=None, description="knowledge dataset dir written by a pipeline `knowledge` stage (wired by pipelines)"
    )
    train_passages: int = Field(default=1, ge=0, le=20, description="k passages retrieved by the rationale (training)")
    inference: Literal["bm25", "reranker", "oracle", "none"] = Field(
        default="bm25",
        description="dev passages: BM25 by question + options, those reranked, the gold rationale's (upper bound)",
    )
    inference_passages: int = Field(default=1, ge=0, le=20, description="k passages in the prompt at inference")
    candidates: int = Field(default=100, ge=1, le=1000, description="BM25 candidates per question for reranking (N)")
    reranker: ModelSource = Field(default=None, description="reranker model: dir or runs:/ URI (wired by pipelines)")
    reranker_batch_size: int = Field(default=64, ge=1)
    instruction: str = Field(
        default="Answer the question by explaining step by step, using the knowledge.",
        description="task instruction at the start of every prompt",
    )


class RerankerConfig(Section):
    """KARD's neural reranker: late interaction (MaxSim) over a pretrained encoder, trained to reproduce
    rationale relevance: KL(softmax(BM25(rationale, d)/τ_target) ‖ softmax(s(question, d)/τ_model))."""

    projection_dim: int = Field(default=128, ge=8)
    lora_rank: int = Field(default=16, ge=0, description="LoRA rank on attention query/value; 0 = full fine-tuning")
    lora_alpha: float = Field(default=32.0, gt=0.0)
    max_query_length: int = Field(default=64, ge=8)
    max_passage_length: int = Field(default=160, ge=8)
    candidates_per_query: int = Field(
        default=32, ge=1, description="BM25 hits by question and by rationale whose union forms the candidates"
    )
    sampled_candidates: int = Field(default=8, ge=2, description="candidates per training example")
    loss: Literal["kl", "ce_best"] = Field(default="kl", description="kl (paper) or cross-entropy to the best")
    tau_target_start: float = Field(default=5.0, gt=0.0)
    tau_target_end: float = Field(default=1.0, gt=0.0)
    tau_model_start: float = Field(default=1.0, gt=0.0)
    tau_model_end: float = Field(default=1.0, gt=0.0)
    eval_k: list[int] = Field(default_factory=lambda: [1, 2, 5], description="recall@k cut-offs on dev")


class KardSections(MethodSection):
    """The sections every KARD method reads: its knowledge dataset is built from both."""

    kard: KardConfig = Field(default_factory=KardConfig)
    reranker: RerankerConfig = Field(default_factory=RerankerConfig)


def prompt_and_rationale_lengths(cfg: ExperimentConfig) -> SequenceLengths:
    """Passages in the input, the rationale and the answer in the target: bound both."""
    data = cfg.data
    return SequenceLengths(
        data.max_input_length + data.max_rationale_length, data.max_target_length + data.max_rationale_length
    )


def student_headline(cfg: ExperimentConfig) -> str:
    """KARD answers by majority vote over sampled rationales when run.eval_vote_samples > 0."""
    return "dev/vote_accuracy" if cfg.run.eval_vote_samples else "dev/accuracy"


def student_label(cfg: ExperimentConfig) -> str:
    """A KARD student is compared by the knowledge it reads at inference (kard_bm25, kard_reranker, ...)."""
    return f"kard_{section_of(cfg, KardSections).kard.inference}"


def reranker_headline(cfg: ExperimentConfig) -> str:
    return f"dev/reranker_recall_at_{min(section_of(cfg, KardSections).reranker.eval_k)}"


KNOWLEDGE = StageReference(
    "knowledge",
    "knowledge",
    "kard.knowledge",
    "earlier knowledge stage whose dataset this stage reads (method.kard.knowledge)",
    output="knowledge_path",
    tags={"kard.knowledge_key": "knowledge_key"},
    stage_tag="kard.knowledge_stage",
)
RERANKER = StageReference(
    "reranker",
    "train",
    "kard.reranker",
    "earlier stage whose model reranks the passages at inference (method.kard.reranker)",
    tags={"kard.reranker_run_id": "mlflow_run_id", "kard.reranker_model_uri": "model_uri"},
)


@register_method(
    implementation="trainer.methods.kard.student:ReasoningDistillation",
    summary="reasoning distillation: question → the LLM's rationale, then the answer",
    references=(KNOWLEDGE,),
    sequence_lengths=prompt_and_rationale_lengths,
    headline=student_headline,
)
class ReasoningDistillationSection(KardSections):
    name: Literal["rd"] = "rd"


@register_method(
    implementation="trainer.methods.kard.student:KardStudent",
    summary="KARD student: question + retrieved passages → the LLM's rationale, then the answer",
    references=(KNOWLEDGE, RERANKER),
    sequence_lengths=prompt_and_rationale_lengths,
    headline=student_headline,
    label=student_label,
)
class KardStudentSection(KardSections):
    name: Literal["kard"] = "kard"


@register_method(
    implementation="trainer.methods.kard.reranker:KardReranker",
    summary="KARD reranker: late interaction over a pretrained encoder, trained with the rationale's relevance",
    references=(KNOWLEDGE,),
    sequence_lengths=prompt_and_rationale_lengths,
    headline=reranker_headline,
)
class KardRerankerSection(KardSections):
    name: Literal["kard_reranker"] = "kard_reranker"
