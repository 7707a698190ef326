"""Memory plan for training a T5 with DeepSpeed ZeRO: which stage, offload and checkpointing fit your GPUs.

    python -m trainer.planning.plan --model t5-3b --gpus-per-node 8 --nodes 1 --gpu-memory-gib 80 \\
        --precision bf16 --micro-batch 8 --input-length 512 --target-length 128
    python -m trainer.planning.plan --config ray_jobs/configs/demo.yaml model.name=t5-large run.use_gpu=true
    python -m trainer.planning.plan --table --gpus 1,2,4,8,16 --gpu-memory-gib 80    # README's table

--model takes a preset (t5-small ... t5-3b, t5-v1_1-*, flan-t5-*), a published hub name, or a config.json path.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from trainer.config.loader import ConfigError, load_config, split_config_args
from trainer.models.presets import PRESETS
from trainer.planning.architecture import ArchitectureError, resolve_architecture
from trainer.planning.from_config import plan_for_config
from trainer.planning.memory import GIB, Precision, Workload, ZeroSetup
from trainer.planning.planner import Estimate, Hardware, Plan, PlanRequest, Teacher, make_plan

TABLE_PRESETS = [name for name, preset in PRESETS.items() if preset.published]


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def format_plan(plan: Plan) -> str:
    """The chosen setup, then every candidate's per-device breakdown side by side."""
    request = plan.request
    arch = request.arch
    work = request.work
    lines = [
        f"model {arch.name}: {arch.num_parameters:,} parameters (largest layer {arch.largest_layer_parameters:,}), "
        f"{'gated-GELU' if arch.gated else 'ReLU'} FF, {'tied' if arch.tie_word_embeddings else 'untied'} embeddings",
        f"hardware: {request.hardware.describe()}; {request.precision}; micro batch {work.micro_batch_size}, "
        f"input {work.source_length}, target {work.target_length} tokens; attention kernel: {request.kernel}",
    ]
    if request.teacher is not None:
        t = request.teacher
        lines.append(f"frozen KNIFE teacher {t.arch.name} (ZeRO-{t.zero_stage}), input {t.work.source_length} tokens")
    chosen = plan.chosen
    if chosen is None:
        lines.append("plan: NOTHING FITS - lower the micro batch or sequence lengths, or add GPUs")
    else:
        lines.append(
            f"plan: {chosen.setup.describe()}  ({_gib(chosen.device_bytes)} of {_gib(chosen.usable_bytes)} GiB "
            "usable per device)"
        )
    lines.append("")
    names = [_short(e.setup) for e in plan.estimates]
    width = max(12, *(len(n) for n in names)) + 2
    header = f"{'per device (GiB)':<26}" + "".join(f"{n:>{width}}" for n in names)
    rows = [
        ("model states", lambda e: e.model_states.gpu_bytes),
        (
            "activations",
            lambda e: e.activations.encoder_bytes + e.activations.decoder_bytes + e.activations.output_bytes,
        ),
    ]
    if request.teacher is not None:
        rows += [
            ("teacher weights", lambda e: e.teacher_states_bytes),
            ("teacher outputs", lambda e: e.activations.teacher_bytes),
        ]
    rows += [
        ("runtime (CUDA, NCCL)" if request.hardware.on_gpu else "runtime (Python, torch)", lambda e: e.runtime_bytes),
        ("total", lambda e: e.device_bytes),
        ("usable", lambda e: e.usable_bytes),
    ]
    lines.append(header)
    for label, value in rows:
        lines.append(f"  {label:<24}" + "".join(f"{_gib(value(e)):>{width}}" for e in plan.estimates))
    if request.hardware.on_gpu:
        lines.append(
            f"  {'host per node (ZeRO+ranks)':<24}"
            + "".join(f"{_gib(e.host_bytes_per_node):>{width}}" for e in plan.estimates)
        )
    lines.append(f"  {'fits':<24}" + "".join(f"{'yes' if e.fits else 'no':>{width}}" for e in plan.estimates))
    return "\n".join(lines)


def _short(setup: ZeroSetup) -> str:
    text = f"Z{setup.zero_stage}"
    if setup.offload_optimizer:
        text += "+offO"
    if setup.offload_param:
        text += "+offP"
    if setup.gradient_checkpointing:
        text += "+ckpt"
    return text


def plan_json(plan: Plan) -> dict:
    def one(e: Estimate) -> dict:
        return {
            "setup": e.setup.__dict__,
            "model_states_gib": e.model_states.gpu_bytes / GIB,
            "activations_gib": e.activations.total_bytes / GIB,
            "teacher_states_gib": e.teacher_states_bytes / GIB,
            "device_total_gib": e.device_bytes / GIB,
            "usable_gib": e.usable_bytes / GIB,
            "host_per_node_gib": e.host_bytes_per_node / GIB,
            "fits": e.fits,
        }

    chosen = plan.chosen
    return {
        "model": plan.request.arch.name,
        "parameters": plan.request.arch.num_parameters,
        "chosen": one(chosen) if chosen else None,
        "candidates": [one(e) for e in plan.estimates],
    }


def hardware_for(total_gpus: int, gpus_per_node: int, gpu_memory_gib: float, node_memory_gib: float) -> Hardware:
    per_node = min(total_gpus, gpus_per_node)
    return Hardware(per_node, max(1, total_gpus // per_node), gpu_memory_gib, node_memory_gib)


def format_table(
    gpu_counts: Sequence[int],
    gpus_per_node: int,
    gpu_memory_gib: float,
    node_memory_gib: float,
    precision: Precision,
    work: Workload,
    presets: Sequence[str] = TABLE_PRESETS,
) -> str:
    """Markdown: one row per published preset, one column per GPU count: the plan and its per-GPU total."""
    header = "| preset | parameters | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in gpu_counts) + " |"
    lines = [header, "|" + "---|" * (2 + len(gpu_counts))]
    for name in presets:
        arch = resolve_architecture(name)
        cells = []
        for count in gpu_counts:
            hardware = hardware_for(count, gpus_per_node, gpu_memory_gib, node_memory_gib)
            chosen = make_plan(PlanRequest(arch, hardware, precision, work)).chosen
            cells.append(
                "does not fit" if chosen is None else f"{_short(chosen.setup)} {chosen.device_bytes / GIB:.1f}"
            )
        lines.append(f"| {name} | {arch.num_parameters / 1e6:,.1f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus: expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--gpus: counts must be positive")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.planning.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="preset, published hub name, or config.json path")
    source.add_argument("--config", nargs="+", metavar="ARG", help="a training config, then dotted overrides")
    source.add_argument("--table", action="store_true", help="markdown table: published presets x --gpus")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus", type=_parse_counts, default=[1, 2, 4, 8, 16], help="--table: total GPU counts")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0)
    parser.add_argument("--node-memory-gib", type=float, default=512.0)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--target-length", type=int, default=128)
    parser.add_argument("--teacher", help="a frozen KNIFE teacher (preset, hub name, config.json)")
    parser.add_argument("--teacher-input-length", type=int, help="teacher input (input + rationale); default 2x input")
    parser.add_argument("--teacher-zero-stage", type=int, choices=(0, 3), default=3)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Workload(args.micro_batch, args.input_length, args.target_length)
    try:
        if args.table:
            print(
                format_table(
                    args.gpus, args.gpus_per_node, args.gpu_memory_gib, args.node_memory_gib, args.precision, work
                )
            )
            return 0
        if args.config:
            plan = plan_for_config(load_config(*split_config_args(args.config)))
        else:
            arch = resolve_architecture(args.model)
            teacher = None
            if args.teacher:
                teacher_work = Workload(
                    args.micro_batch, args.teacher_input_length or 2 * args.input_length, args.target_length
                )
                teacher = Teacher(resolve_architecture(args.teacher), teacher_work, args.teacher_zero_stage)
            hardware = Hardware(args.gpus_per_node, args.nodes, args.gpu_memory_gib, args.node_memory_gib)
            plan = make_plan(PlanRequest(arch, hardware, args.precision, work, teacher))
    except (ArchitectureError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan_json(plan), indent=2) if args.json else format_plan(plan))
    return 0 if plan.chosen is not None else 1


if __name__ == "__main__":
    sys.exit(main())
