"""DeepSpeed JSON templates with every "auto" resolved by us, so DeepSpeed never sees one."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config.schema import DeepSpeedConfig, OptimConfig

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"
AUTO = "auto"
# Sized from the model being wrapped (its trainable parameter count), so resolved only once it exists.
MODEL_SIZED_KEYS = ("zero_optimization.reduce_bucket_size", "zero_optimization.allgather_bucket_size")
# Largest ZeRO gradient-reduce / parameter-all-gather bucket, in elements (400 MB in bf16). DeepSpeed's default is
# 5e8; from a few tens of MB per message on, a collective runs at the link's bandwidth on NVLink, InfiniBand and
# Ethernet alike, so larger buckets only cost memory: ZeRO allocates the reduce bucket in full every step (twice
# with overlap_comm).
MAX_BUCKET_ELEMENTS = 200_000_000


class DeepSpeedConfigError(ValueError):
    """A template that cannot be resolved into a valid DeepSpeed config."""


@dataclass(frozen=True)
class ResolveContext:
    """Facts known only at run time that the "auto" values depend on."""

    world_size: int
    hidden_size: int
    on_gpu: bool


def load_template(name_or_path: str) -> tuple[dict[str, Any], Path]:
    """A template by name (`zero2` → ds_configs/zero2.json) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = DS_CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json")))
        raise DeepSpeedConfigError(f"ds.template: {name_or_path!r} not found (known templates: {known})")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def check_template_stage(ds: DeepSpeedConfig, template: dict[str, Any]) -> None:
    """A template that states a stage and a `ds.zero_stage` set beside it must agree: a stage-3 run built on a
    stage-2 template would lack the template's stage-3 settings. (The schema checks the built-in names.)"""
    stated = template.get("zero_optimization", {}).get("stage")
    if isinstance(ds.zero_stage, int) and stated is not None and stated != ds.zero_stage:
        raise DeepSpeedConfigError(
            f"ds.zero_stage={ds.zero_stage} contradicts ds.template={ds.template} (stage {stated}); set one of them, "
            "or remove zero_optimization.stage from the template to let ds.zero_stage decide"
        )


def _fill(section: dict[str, Any], key: str, value: Any) -> None:
    """Replace an "auto" (or absent) value; an explicit template value wins."""
    if section.get(key, AUTO) == AUTO:
        section[key] = value


def _offload_block(enabled: bool, on_gpu: bool) -> dict[str, Any] | None:
    return {"device": "cpu", "pin_memory": on_gpu} if enabled else None


def resolve_training_config(
    template: dict[str, Any], ds: DeepSpeedConfig, optim: OptimConfig, ctx: ResolveContext
) -> dict[str, Any]:
    """Fill batch sizes, precision, optimizer, schedule and ZeRO buckets from the typed config."""
    config = copy.deepcopy(template)
    if config.get("fp16", {}).get("enabled") not in (None, False):
        raise DeepSpeedConfigError("fp16 is not supported: T5 overflows in fp16; use ds.precision=bf16 or fp32")
    _fill(config, "train_micro_batch_size_per_gpu", optim.micro_batch_size)
    _fill(config, "gradient_accumulation_steps", optim.gradient_accumulation_steps)
    _fill(
        config,
        "train_batch_size",
        optim.micro_batch_size * optim.gradient_accumulation_steps * ctx.world_size,
    )
    _fill(config, "gradient_clipping", optim.gradient_clipping)
    config.setdefault("bf16", {})
    _fill(config["bf16"], "enabled", ds.precision == "bf16")

    if "optimizer" in config:
        params = config["optimizer"].setdefault("params", {})
        _fill(params, "lr", optim.lr)
        _fill(params, "betas", list(optim.betas))
        _fill(params, "eps", optim.eps)
        _fill(params, "weight_decay", optim.weight_decay)
        if not ctx.on_gpu and not ds.offload_optimizer:
            params.setdefault("torch_adam", True)  # FusedAdam is a CUDA kernel; torch's AdamW needs no build
    if "scheduler" in config:
        params = config["scheduler"].setdefault("params", {})
        _fill(params, "warmup_max_lr", optim.lr)
        _fill(params, "warmup_num_steps", max(1, optim.warmup_steps))  # DeepSpeed rejects 0
        _fill(params, "total_num_steps", optim.max_steps)

    _resolve_zero(config, ds, ctx, training=True)
    assert_no_auto(config, allowed=MODEL_SIZED_KEYS)
    return config


def zero_bucket_elements(trainable_parameters: int) -> int:
    """Elements per ZeRO reduce and all-gather bucket: the whole model while it fits under MAX_BUCKET_ELEMENTS
    (one collective each way per step), else that cap (T5-3B: 15 buckets a step, enough to overlap communication
    with the backward pass). Even, as DeepSpeed's all-gather alignment requires.

    Not transformers' hidden_size² ("auto" in its DeepSpeed integration) nor DeepSpeed's fixed 5e8: hidden² makes
    buckets of 4K-1M elements, so a step issues hundreds to thousands of collectives, each paying its latency
    (1.5-1.9x slower than plain DDP on a 2.9M-parameter T5 over gloo); a fixed 5e8 allocates a 1-2 GB buffer for a
    model of a few million parameters.
    """
    return max(2, min(MAX_BUCKET_ELEMENTS, trainable_parameters + trainable_parameters % 2))


def size_buckets(config: dict[str, Any], trainable_parameters: int) -> dict[str, Any]:
    """The training config completed with the bucket sizes of the model it will wrap; no "auto" is left."""
    config = copy.deepcopy(config)
    zero = config.setdefault("zero_optimization", {})
    bucket = zero_bucket_elements(trainable_parameters)
    _fill(zero, "reduce_bucket_size", bucket)
    if zero.get("stage", 0) in (1, 2) or "allgather_bucket_size" in zero:
        _fill(zero, "allgather_bucket_size", bucket)
    assert_no_auto(config)
    return config


def resolve_inference_config(
    template: dict[str, Any], ds: DeepSpeedConfig, micro_batch_size: int, ctx: ResolveContext
) -> dict[str, Any]:
    """Config for a frozen model (KNIFE's teacher): ZeRO-3 partitions it, no optimizer state."""
    config = copy.deepcopy(template)
    _fill(config, "train_micro_batch_size_per_gpu", micro_batch_size)
    config.setdefault("bf16", {})
    _fill(config["bf16"], "enabled", ds.precision == "bf16")
    _resolve_zero(config, ds.model_copy(update={"zero_stage": None, "offload_optimizer": False}), ctx, training=False)
    assert_no_auto(config)
    return config


def _resolve_zero(config: dict[str, Any], ds: DeepSpeedConfig, ctx: ResolveContext, training: bool) -> None:
    """Stage, overlap, ZeRO-3 prefetch/persistence and offload; a training config's buckets stay "auto" until
    `size_buckets` knows the model (a frozen model has no gradients to bucket)."""
    zero = config.setdefault("zero_optimization", {})
    if ds.zero_stage == AUTO:
        raise DeepSpeedConfigError(
            "ds.zero_stage=auto is resolved by the memory planner before a run starts (ray_jobs.submit, "
            "ray_jobs.k8s render, trainer.train); this config reached DeepSpeed unresolved"
        )
    check_template_stage(ds, config)
    if ds.zero_stage is not None:
        zero["stage"] = ds.zero_stage
    stage = zero.get("stage", 0)
    hidden_sq = ctx.hidden_size * ctx.hidden_size
    _fill(zero, "overlap_comm", ctx.on_gpu)
    if training:
        zero.setdefault("reduce_bucket_size", AUTO)
        if stage in (1, 2):
            zero.setdefault("allgather_bucket_size", AUTO)
    if stage == 3:
        _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * hidden_sq))
        _fill(zero, "stage3_param_persistence_threshold", 10 * ctx.hidden_size)
    elif ds.offload_param:
        raise DeepSpeedConfigError(f"ds.offload_param needs ZeRO stage 3, the resolved stage is {stage}")
    if ds.offload_optimizer and stage == 0:
        raise DeepSpeedConfigError("ds.offload_optimizer needs ZeRO stage 1, 2 or 3")
    for key, enabled in (("offload_optimizer", ds.offload_optimizer), ("offload_param", ds.offload_param)):
        if zero.get(key) == AUTO or enabled:
            block = _offload_block(enabled, ctx.on_gpu)
            if block is None:
                zero.pop(key, None)
            else:
                zero[key] = block
    # Keys that only exist for other stages would make DeepSpeed warn or fail; drop the unused ones.
    if stage != 3:
        for key in [k for k in zero if k.startswith("stage3_")]:
            del zero[key]


def assert_no_auto(config: Any, path: str = "", allowed: tuple[str, ...] = ()) -> None:
    """Fail with the dotted key of any value still left as "auto" (except the `allowed` dotted keys)."""
    if isinstance(config, dict):
        for key, value in config.items():
            assert_no_auto(value, f"{path}.{key}" if path else key, allowed)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            assert_no_auto(value, f"{path}[{index}]", allowed)
    elif config == AUTO and path not in allowed:
        raise DeepSpeedConfigError(f"DeepSpeed config key {path!r} is still 'auto' after resolution")
