"""Plans for training configs: the workload a method produces, the hardware in `cluster`, and `ds.zero_stage=auto`."""

from __future__ import annotations

import contextlib
import math
import sys

from trainer.config.loader import ConfigError
from trainer.config.schema import ExperimentConfig
from trainer.methods.registry import spec_of
from trainer.models.architecture import T5Architecture
from trainer.planning.architecture import ArchitectureError, resolve_architecture
from trainer.planning.memory import GIB, Workload, ZeroSetup
from trainer.planning.planner import Estimate, Hardware, Plan, PlanRequest, Teacher, estimate, make_plan
from trainer.strategy.ds_config import DeepSpeedConfigError, check_template_stage, load_template

BUILTIN_TEMPLATES = ("zero0", "zero1", "zero2", "zero3")


class ModelNotPlannable(ConfigError):
    """The model's architecture cannot be sized offline (not a T5, or only named by a hub name or URI)."""


def workload(cfg: ExperimentConfig) -> Workload:
    """Padded source and target lengths of the method's training features (the method declares them)."""
    lengths = spec_of(cfg).sequence_lengths(cfg)
    return Workload(cfg.optim.micro_batch_size, lengths.source, lengths.target)


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
    frozen = spec_of(cfg).frozen_model(cfg)
    if frozen is not None:
        frozen_arch = arch  # not sized yet (an MLflow URI or hub name): planned in the trained model's shape
        if frozen.source is not None:
            with contextlib.suppress(ArchitectureError):
                frozen_arch = resolve_architecture(frozen.source, cfg.model.tokenizer_vocab_size)
        lengths = frozen.lengths
        teacher = Teacher(
            frozen_arch, Workload(cfg.optim.micro_batch_size, lengths.source, lengths.target), frozen.zero_stage
        )
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
    if template not in BUILTIN_TEMPLATES:
        try:
            check_template_stage(ds, load_template(template)[0])
        except DeepSpeedConfigError as exc:
            raise ConfigError(f"ds.zero_stage=auto chose {setup.describe()}, but {exc}") from None
    model = cfg.model.model_copy(update={"gradient_checkpointing": setup.gradient_checkpointing})
    print(
        f"[plan] {cfg.run.name}: ds.zero_stage=auto -> {setup.describe()} "
        f"({chosen.device_bytes / GIB:.1f} of {chosen.usable_bytes / GIB:.1f} GiB usable per device)",
        file=sys.stderr,
        flush=True,
    )
    return cfg.model_copy(update={"ds": ds, "model": model})
