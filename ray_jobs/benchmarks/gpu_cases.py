"""What the GPU benchmark measures: step-time cases by suite, with the sizes of a GPU run and of a CPU smoke run.

Torch-free on purpose: the orchestrator plans and reports without touching CUDA; only the step workers
(ray_jobs.benchmarks.gpu_step) hold a GPU context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

STEP_SUITES = ("zero", "knife", "checkpointing", "optimizer", "micro_batch")
SUITES = (*STEP_SUITES, "e2e")

Engine = Literal["deepspeed", "plain"]


@dataclass(frozen=True)
class StepCase:
    """One configuration whose optimizer steps are timed in a fresh process (on a GPU) or a shared one (CPU)."""

    model: str
    engine: Engine = "deepspeed"
    method: Literal["ft_io", "knife_student"] = "ft_io"
    template: Literal["zero2", "zero3"] = "zero2"
    offload_optimizer: bool = False
    optimizer: Literal["fused", "torch"] = "fused"
    gradient_checkpointing: bool = False
    micro_batch_size: int = 8
    src_len: int = 512
    tgt_len: int = 128
    rationale_len: int = 0  # KNIFE: the teacher reads src_len input + rationale_len FTR tokens
    precision: Literal["bf16", "fp32"] = "bf16"
    warmup_steps: int = 3
    measure_steps: int = 10
    use_gpu: bool = True

    @property
    def key(self) -> str:
        """Identity of the measurement (suites share rows: the fused ZeRO-2 row is also the optimizer baseline)."""
        engine = "plain" if self.engine == "plain" else self.template + ("+offload" if self.offload_optimizer else "")
        return "/".join(
            [
                self.model,
                self.method,
                engine,
                self.optimizer,
                "ckpt" if self.gradient_checkpointing else "no-ckpt",
                f"mb{self.micro_batch_size}",
                f"{self.src_len}+{self.rationale_len}>{self.tgt_len}",
                self.precision,
                "cuda" if self.use_gpu else "cpu",
            ]
        )

    def skip_reason(self) -> str | None:
        """Why this case cannot run on its device, decided before any process starts."""
        if not self.use_gpu and self.optimizer == "fused":
            return "FusedAdam is a CUDA kernel; on CPU DeepSpeed runs torch's AdamW"
        if not self.use_gpu and self.offload_optimizer:
            return "optimizer offload moves optimizer states from GPU to CPU memory; nothing to offload on CPU"
        if self.engine == "plain" and self.method != "ft_io":
            return "the plain PyTorch loop is the baseline for single-model steps only"
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def config_overrides(self, template: str | None = None) -> list[str]:
        """The overrides of the ExperimentConfig a training run of this case would use: what the step worker builds
        and what the memory planner sizes. `template` stands in for the case's (same ZeRO stage, e.g. torch AdamW)."""
        lengths = [f"data.max_input_length={self.src_len}", f"data.max_target_length={self.tgt_len}"]
        if self.rationale_len:
            lengths.append(f"data.max_rationale_length={self.rationale_len}")
        return [
            f"model.name={self.model}",
            f"model.gradient_checkpointing={str(self.gradient_checkpointing).lower()}",
            f"method.name={self.method}",
            f"ds.template={template or self.template}",
            f"ds.offload_optimizer={str(self.offload_optimizer).lower()}",
            f"ds.precision={self.precision}",
            f"optim.micro_batch_size={self.micro_batch_size}",
            f"optim.max_steps={self.warmup_steps + self.measure_steps}",
            f"run.use_gpu={str(self.use_gpu).lower()}",
            "run.num_workers=1",
            "data.dataset=synthetic",
            *lengths,
        ]


@dataclass(frozen=True)
class BenchSettings:
    """Sizes and model lists; `gpu()` is the real run, `quick()` the CPU smoke run of the same code."""

    models: tuple[str, ...]
    knife_models: tuple[str, ...]
    offload_models: tuple[str, ...]
    checkpointing_models: tuple[str, ...]
    detail_model: str  # the model of the optimizer comparison and the micro-batch sweep
    micro_batch_size: int
    micro_batches: tuple[int, ...]
    src_len: int
    tgt_len: int
    knife_input_len: int
    knife_rationale_len: int
    knife_tgt_len: int
    precision: Literal["bf16", "fp32"]
    warmup_steps: int
    measure_steps: int
    use_gpu: bool
    e2e_model: str
    e2e_steps: int
    e2e_template: str = "zero3"  # ZeRO-3 end to end: partitioned build, NCCL, generation with every rank in step

    @classmethod
    def gpu(cls) -> BenchSettings:
        # Sequence lengths of T5 pre-training (512 in, 128 out) for the throughput rows; the KNIFE rows use the
        # data defaults of a KNIFE run (128 input + 128 rationale tokens, 32 answer tokens).
        return cls(
            models=("t5-base", "t5-large", "t5-3b"),
            knife_models=("t5-large", "t5-3b"),
            offload_models=("t5-3b",),
            checkpointing_models=("t5-large", "t5-3b"),
            detail_model="t5-large",
            micro_batch_size=8,
            micro_batches=(4, 8, 16, 32, 64),
            src_len=512,
            tgt_len=128,
            knife_input_len=128,
            knife_rationale_len=128,
            knife_tgt_len=32,
            precision="bf16",
            warmup_steps=3,
            measure_steps=10,
            use_gpu=True,
            e2e_model="t5-base",
            e2e_steps=200,
        )

    @classmethod
    def quick(cls, use_gpu: bool) -> BenchSettings:
        return cls(
            models=("t5-tiny",),
            knife_models=("t5-tiny",),
            offload_models=("t5-tiny",) if use_gpu else (),
            checkpointing_models=("t5-tiny",),
            detail_model="t5-tiny",
            micro_batch_size=4,
            micro_batches=(2, 4),
            src_len=32,
            tgt_len=8,
            knife_input_len=16,
            knife_rationale_len=16,
            knife_tgt_len=8,
            precision="bf16",
            warmup_steps=1,
            measure_steps=3,
            use_gpu=use_gpu,
            e2e_model="t5-tiny",
            e2e_steps=8,
        )

    def case(self, model: str, **changes: Any) -> StepCase:
        """A case at these sizes; the default optimizer is the one DeepSpeed picks on the device."""
        base = StepCase(
            model=model,
            optimizer="fused" if self.use_gpu else "torch",
            micro_batch_size=self.micro_batch_size,
            src_len=self.src_len,
            tgt_len=self.tgt_len,
            precision=self.precision,
            warmup_steps=self.warmup_steps,
            measure_steps=self.measure_steps,
            use_gpu=self.use_gpu,
        )
        return replace(base, **changes)


def plan_cases(settings: BenchSettings, suites: tuple[str, ...]) -> dict[str, list[StepCase]]:
    """Cases per suite, in the order they run; a case shared by two suites appears in both, and runs once."""
    s = settings
    plan: dict[str, list[StepCase]] = {}
    if "zero" in suites:
        plan["zero"] = []
        for model in s.models:
            plan["zero"] += [s.case(model, template="zero2"), s.case(model, template="zero3")]
            if model in s.offload_models:
                plan["zero"].append(s.case(model, template="zero3", offload_optimizer=True))
            plan["zero"].append(s.case(model, engine="plain"))
    if "knife" in suites:
        knife = {
            "method": "knife_student",
            "src_len": s.knife_input_len,
            "rationale_len": s.knife_rationale_len,
            "tgt_len": s.knife_tgt_len,
        }
        plan["knife"] = []
        for model in s.knife_models:
            plan["knife"].append(s.case(model, **knife))
            if model in s.offload_models:
                plan["knife"].append(s.case(model, template="zero3", offload_optimizer=True, **knife))
    if "checkpointing" in suites:
        plan["checkpointing"] = [
            case
            for model in s.checkpointing_models
            for case in (s.case(model), s.case(model, gradient_checkpointing=True))
        ]
    if "optimizer" in suites:
        plan["optimizer"] = [s.case(s.detail_model, optimizer="fused"), s.case(s.detail_model, optimizer="torch")]
    if "micro_batch" in suites:
        plan["micro_batch"] = [s.case(s.detail_model, micro_batch_size=mb) for mb in s.micro_batches]
    return plan


def unique_cases(plan: dict[str, list[StepCase]]) -> list[StepCase]:
    seen: dict[str, StepCase] = {}
    for cases in plan.values():
        for case in cases:
            seen.setdefault(case.key, case)
    return list(seen.values())
