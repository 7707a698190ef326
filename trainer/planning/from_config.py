"""Plans for training configs: the workload a method produces, the hardware in `cluster`, and `ds.zero_stage=auto`."""

from __future__ import annotations

import contextlib
import math
import sys

from trainer.config.loader import ConfigError
from trainer.config.schema import ExperimentConfig
from trainer.planning.architecture import ArchitectureError, T5Architecture, resolve_architecture
from trainer.planning.memory import GIB, Workload, ZeroSetup
from trainer.planning.planner import Estimate, Hardware, Plan, PlanRequest, Teacher, estimate, make_plan
from trainer.strategy.ds_config import DeepSpeedConfigError, load_template

BUILTIN_TEMPLATES = ("zero1", "zero2", "zero3")


class ModelNotPlannable(ConfigError):
    """The model's architecture cannot be sized offline (not a T5, or only named by a hub name or URI)."""


def workload(cfg: ExperimentConfig) -> Workload:
    """Padded source and target lengths of the method's training features."""
    data, method = cfg.data, cfg.method.name
    src, tgt = data.max_input_length, data.max_target_length
    if method in ("ft_ior", "ft_iro"):
        tgt = data.max_target_length + data.max_rationale_length
    elif method == "multitask":
        tgt = max(data.max_target_length, data.max_rationale_length)
    elif method == "knife_teacher":
        src = data.max_input_length + data.max_rationale_length
    elif method not in ("ft_io", "knife_student"):
        # Methods with rationales or passages in their input and output: bound both.
        src = data.max_input_length + data.max_rationale_length
        tgt = data.max_target_length + data.max_rationale_length
    return Workload(cfg.optim.micro_batch_size, src, tgt)


def hardware(cfg: ExperimentConfig) -> Hardware:
    """GPU runs fill nodes of `cluster.gpus_per_node`; CPU runs get one worker (pod) per rank."""
    workers, cluster = cfg.run.num_workers, cfg.cluster
    if not cfg.run.use_gpu:
        return Hardware(1, workers, cluster.gpu_memory_gib, cluster.node_memory_gib, on_gpu=False)
    if workers > cluster.gpus_per_node and workers % cluster.gpus_per_node:
        raise ConfigError(
            f"run.num_workers={workers} is not a multiple of cluster.gpus_per_node={cluster.gpus_per_node}: "
            "every GPU node runs the same number of workers"
        )
    per_node = min(workers, cluster.gpus_per_node)
    return Hardware(per_node, math.ceil(workers / per_node), cluster.gpu_memory_gib, cluster.node_memory_gib)


def _architecture(model: str, field: str, cfg: ExperimentConfig) -> T5Architecture:
    try:
        return resolve_architecture(model, cfg.model.tokenizer_vocab_size)
    except ArchitectureError as exc:
        raise ModelNotPlannable(f"{field}: {exc}") from None


def plan_request(cfg: ExperimentConfig) -> PlanRequest:
    arch = _architecture(cfg.model.name, "model.name", cfg)
    teacher = None
    if cfg.method.name == "knife_student":
        # A pipeline wires the teacher stage's model at run time; until then it is planned as the student's
        # shape (KNIFE aligns hidden states, so the teacher shares d_model; the paper uses the same model).
        source = cfg.method.knife.teacher
        teacher_arch = arch
        if source is not None:
            with contextlib.suppress(ArchitectureError):  # an MLflow URI or hub name: plan the student's shape
                teacher_arch = resolve_architecture(source, cfg.model.tokenizer_vocab_size)
        data = cfg.data
        teacher_work = Workload(
            cfg.optim.micro_batch_size, data.max_input_length + data.max_rationale_length, data.max_target_length
        )
        teacher = Teacher(teacher_arch, teacher_work, cfg.method.knife.teacher_zero_stage)
    stage_override = cfg.ds.zero_stage
    required = ZeroSetup(
        0 if stage_override is None or stage_override == "auto" else stage_override,
        cfg.ds.offload_optimizer,
        cfg.ds.offload_param,
        cfg.model.gradient_checkpointing,
    )
    return PlanRequest(arch, hardware(cfg), cfg.ds.precision, workload(cfg), teacher, required)


def plan_for_config(cfg: ExperimentConfig) -> Plan:
    return make_plan(plan_request(cfg))


def configured_setup(cfg: ExperimentConfig) -> ZeroSetup:
    """The setup a (resolved) config runs with: its stage override, else its template's stage."""
    override = cfg.ds.zero_stage
    if override == "auto":
        raise ConfigError("ds.zero_stage=auto: resolve it first (resolve_auto_zero)")
    stage: int
    if override is None:
        try:
            template, _ = load_template(cfg.ds.template)
        except DeepSpeedConfigError as exc:
            raise ConfigError(str(exc)) from None
        stage = int(template.get("zero_optimization", {}).get("stage", 0))
    else:
        stage = override
    return ZeroSetup(stage, cfg.ds.offload_optimizer, cfg.ds.offload_param, cfg.model.gradient_checkpointing)


def estimate_for_config(cfg: ExperimentConfig) -> Estimate:
    """Per-device and host memory of a config as configured (what a RayJob's pods are sized from)."""
    return estimate(plan_request(cfg), configured_setup(cfg))


def resolve_auto_zero(cfg: ExperimentConfig) -> ExperimentConfig:
    """`ds.zero_stage=auto` → the planned stage, offload and gradient checkpointing; other configs unchanged.

    Raises ConfigError when no setup fits, with the smallest per-GPU figure and what to change.
    """
    if cfg.ds.zero_stage != "auto":
        return cfg
    plan = plan_for_config(cfg)
    chosen = plan.chosen
    if chosen is None:
        smallest = min(plan.estimates, key=lambda e: e.device_bytes)
        raise ConfigError(
            f"ds.zero_stage=auto: {cfg.model.name} does not fit {plan.request.hardware.describe()}: the smallest "
            f"setup ({smallest.setup.describe()}) needs {smallest.device_bytes / GIB:.1f} GiB per device of "
            f"{smallest.usable_bytes / GIB:.1f} usable (host {smallest.host_bytes_per_node / GIB:.0f} of "
            f"{smallest.node_memory_bytes / GIB:.0f} GiB); lower optim.micro_batch_size or the sequence lengths, "
            "or add workers"
        )
    setup = chosen.setup
    template = f"zero{setup.zero_stage}" if cfg.ds.template in BUILTIN_TEMPLATES else cfg.ds.template
    ds = cfg.ds.model_copy(
        update={
            "zero_stage": setup.zero_stage,
            "template": template,
            "offload_optimizer": setup.offload_optimizer,
            "offload_param": setup.offload_param,
        }
    )
    model = cfg.model.model_copy(update={"gradient_checkpointing": setup.gradient_checkpointing})
    print(
        f"[plan] {cfg.run.name}: ds.zero_stage=auto -> {setup.describe()} "
        f"({chosen.device_bytes / GIB:.1f} of {chosen.usable_bytes / GIB:.1f} GiB usable per device)",
        file=sys.stderr,
        flush=True,
    )
    return cfg.model_copy(update={"ds": ds, "model": model})
