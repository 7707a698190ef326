"""The GPU benchmark's report: MFU from stored FLOPs and step times, comparisons, targets, results.md.

Everything here is derived from results.json, so `--report-only` can redo it (e.g. with another peak).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ray_jobs.benchmarks.gpu_cases import StepCase
from trainer.config.loader import load_config
from trainer.perf.mfu import UnknownGpuError, gpu_peak
from trainer.planning.from_config import ModelNotPlannable, estimate_for_config
from trainer.planning.memory import GIB

MFU_TARGET = 0.40  # t5-3b bf16 on one H100-class GPU (issue 10)
PLAIN_RATIO_TARGET = 1.05  # strategy step time over the plain PyTorch loop's
MEMORY_PLAN_TARGET = 1.10  # measured peak allocated GPU memory over the planner's figure for the same config


def resolve_peak(device: dict[str, Any], peak_tflops: float | None) -> dict[str, Any]:
    """The bf16 peak MFU is measured against: an explicit one, the table's, or none (then MFU stays empty)."""
    if peak_tflops is not None:
        return {"name": "given with --peak-tflops", "bf16_dense_tflops": peak_tflops, "source": "command line"}
    try:
        peak = gpu_peak(device.get("device_name", ""))
    except UnknownGpuError as exc:
        return {"name": None, "bf16_dense_tflops": None, "source": str(exc)}
    return {"name": peak.name, "bf16_dense_tflops": peak.bf16_dense_tflops, "source": peak.source}


def add_utilisation(result: dict[str, Any], peak: dict[str, Any]) -> None:
    """MFU (model FLOPs) and HFU (with recomputation) of one case on one GPU."""
    tflops = peak.get("bf16_dense_tflops")
    ok = result.get("status") == "ok" and result.get("step_time_s")
    for name, flops_key in (("mfu", "model_flops_per_step"), ("hfu", "hardware_flops_per_step")):
        result[name] = result[flops_key] / result["step_time_s"] / (tflops * 1e12) if ok and tflops else None


@cache
def planned_memory_gib(case: StepCase) -> float | None:
    """The memory planner's per-GPU figure for the case's config (trainer.planning, as configured): model states,
    activations and a KNIFE teacher's states, which is what torch.cuda.max_memory_allocated counts; the planner's
    runtime allowance (CUDA context, NCCL buffers) lives outside the caching allocator. None for the plain PyTorch
    loop, which the planner does not model, and for a model it cannot size offline."""
    if case.engine != "deepspeed":
        return None
    try:
        est = estimate_for_config(load_config(overrides=case.config_overrides()))
    except ModelNotPlannable:
        return None
    return (est.model_states.gpu_bytes + est.activations.total_bytes + est.teacher_states_bytes) / GIB


def add_memory_plan(result: dict[str, Any]) -> None:
    """The planner's figure for one case, and its measured peak allocated memory over it (GPU cases that ran)."""
    result["planned_memory_gib"] = planned_memory_gib(StepCase(**result["case"]))
    measured = result.get("peak_memory_allocated_gib") if result.get("status") == "ok" else None
    result["peak_over_plan"] = _ratio(measured, result["planned_memory_gib"])


def _engine_label(case: dict[str, Any]) -> str:
    if case["engine"] == "plain":
        return "plain PyTorch"
    stage = {"zero2": "ZeRO-2", "zero3": "ZeRO-3"}[case["template"]]
    return stage + (" + offload" if case["offload_optimizer"] else "")


def _lengths(case: dict[str, Any]) -> str:
    ftr = f"+{case['rationale_len']}" if case["rationale_len"] else ""
    return f"{case['src_len']}{ftr}→{case['tgt_len']}"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


CASE_HEADER = (
    "| model | method | engine | optimizer | ckpt | micro batch | tokens in→out | step s | samples/s | tokens/s "
    "| TFLOP/s | MFU | HFU | peak alloc GiB | peak reserved GiB | plan GiB | peak / plan | status |"
)


def case_row(result: dict[str, Any]) -> str:
    case = result["case"]
    status = result["status"] if result["status"] == "ok" else f"{result['status']}: {result.get('reason') or ''}"
    cells = [
        case["model"],
        case["method"],
        _engine_label(case),
        result.get("optimizer_impl") or case["optimizer"],
        "on" if case["gradient_checkpointing"] else "off",
        str(case["micro_batch_size"]),
        _lengths(case),
        _num(result.get("step_time_s"), ".4f"),
        _num(result.get("samples_per_s"), ".1f"),
        _num(result.get("tokens_per_s"), ".0f"),
        _num(result.get("achieved_tflops"), ".3g"),
        _pct(result.get("mfu")),
        _pct(result.get("hfu")),
        _num(result.get("peak_memory_allocated_gib"), ".2f"),
        _num(result.get("peak_memory_reserved_gib"), ".2f"),
        _num(result.get("planned_memory_gib"), ".2f"),
        _num(result.get("peak_over_plan"), ".2f"),
        status.replace("|", "/")[:160],
    ]
    return "| " + " | ".join(cells) + " |"


def _ok(results: dict[str, dict[str, Any]], key: str) -> dict[str, Any] | None:
    result = results.get(key)
    return result if result and result["status"] == "ok" else None


def comparisons(summary: dict[str, Any]) -> dict[str, Any]:
    """Strategy vs plain loop, checkpointing on/off, fused vs torch AdamW, the best micro batch, the targets."""
    results: dict[str, dict[str, Any]] = summary["cases"]
    by_suite: dict[str, list[str]] = summary["suites"]
    ok = [r for r in results.values() if r["status"] == "ok"]

    def twin(result: dict[str, Any], **changes: Any) -> dict[str, Any] | None:
        want = {**result["case"], **changes}
        return next((r for r in ok if r["case"] == want), None)

    vs_plain = []
    for result in ok:
        case = result["case"]
        if case["engine"] != "deepspeed" or case["method"] != "ft_io" or case["gradient_checkpointing"]:
            continue
        plain = twin(result, engine="plain", template="zero2", offload_optimizer=False)
        if plain is not None:
            ratio = result["step_time_s"] / plain["step_time_s"]
            vs_plain.append(
                {"key": result["key"], "plain_key": plain["key"], "ratio": ratio, "met": ratio <= PLAIN_RATIO_TARGET}
            )
    checkpointing = []
    for result in ok:
        if result["case"]["gradient_checkpointing"] and (off := twin(result, gradient_checkpointing=False)):
            checkpointing.append(
                {
                    "key": result["key"],
                    "time_ratio": result["step_time_s"] / off["step_time_s"],
                    "memory_ratio": _ratio(
                        result.get("peak_memory_allocated_gib"), off.get("peak_memory_allocated_gib")
                    ),
                }
            )
    optimizer = []
    for result in ok:
        case = result["case"]
        fused = twin(result, optimizer="fused") if case["optimizer"] == "torch" else None
        if case["engine"] == "deepspeed" and fused is not None:
            optimizer.append({"key": result["key"], "torch_over_fused": result["step_time_s"] / fused["step_time_s"]})
    sweep = [results[k] for k in by_suite.get("micro_batch", []) if _ok(results, k)]
    best = max(sweep, key=lambda r: r["samples_per_s"], default=None)
    three_b = [
        r for r in ok
        if r["case"]["model"] == "t5-3b" and r["case"]["engine"] == "deepspeed" and r["case"]["method"] == "ft_io"
    ]  # fmt: skip
    best_3b = max(three_b, key=lambda r: r.get("mfu") or 0.0, default=None)
    planned = [r for r in ok if r.get("peak_over_plan") is not None]
    worst_plan = max(planned, key=lambda r: r["peak_over_plan"], default=None)
    return {
        "strategy_over_plain": vs_plain,
        "checkpointing_on_over_off": checkpointing,
        "optimizer_torch_over_fused": optimizer,
        "best_micro_batch": None if best is None else {"key": best["key"], **_pick(best, "micro_batch_size")},
        "targets": {
            "t5_3b_mfu": {
                "target": MFU_TARGET,
                "value": None if best_3b is None else best_3b.get("mfu"),
                "key": None if best_3b is None else best_3b["key"],
                "met": None if best_3b is None or best_3b.get("mfu") is None else best_3b["mfu"] >= MFU_TARGET,
            },
            "strategy_within_plain": {
                "target": PLAIN_RATIO_TARGET,
                "met": None if not vs_plain else all(v["met"] for v in vs_plain),
            },
            "memory_within_plan": {
                "target": MEMORY_PLAN_TARGET,
                "worst": None if worst_plan is None else worst_plan["peak_over_plan"],
                "key": None if worst_plan is None else worst_plan["key"],
                "cases": len(planned),
                "met": None if worst_plan is None else worst_plan["peak_over_plan"] <= MEMORY_PLAN_TARGET,
            },
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _pick(result: dict[str, Any], key: str) -> dict[str, Any]:
    return {key: result["case"][key], "samples_per_s": result["samples_per_s"], "tokens_per_s": result["tokens_per_s"]}


SUITE_TITLES = {
    "zero": "Throughput, MFU and memory: ZeRO-2, ZeRO-3 (with optimizer offload) and a plain PyTorch loop",
    "knife": "KNIFE student with its frozen teacher as a ZeRO-3 inference engine",
    "checkpointing": "Gradient checkpointing on and off",
    "optimizer": "Fused vs torch AdamW",
    "micro_batch": "Micro-batch sweep",
}


def render_markdown(summary: dict[str, Any]) -> str:
    device, peak, comp = summary["device"], summary["peak"], summary["comparisons"]
    results = summary["cases"]
    where = (
        f"{device.get('device_name')} (1 of {device.get('num_gpus')} GPU(s) used)"
        if device.get("num_gpus")
        else f"{device.get('device_name')}, {device.get('cpu_count')} cores, no GPU"
    )
    lines = [
        "# GPU benchmark",
        "",
        f"Updated {summary['updated']} by `{summary['command']}`.",
        "",
        f"- Device: {where}; torch {device.get('torch')} (CUDA {device.get('cuda')}), DeepSpeed "
        f"{device.get('deepspeed')}, transformers {device.get('transformers')}, Python {device.get('python')}.",
        f"- bf16 peak for MFU: {_num(peak.get('bf16_dense_tflops'), '.1f')} TFLOP/s ({peak.get('name')}; "
        f"{peak.get('source')}). Measured bf16 matmul ceiling (8192³, median of 10): "
        f"{_num(device.get('matmul_bf16_tflops'), '.1f')} TFLOP/s.",
        "- Models (randomly initialised): "
        + (
            ", ".join(
                f"{name} {check['parameters'] / 1e6:,.1f}M parameters (d_model {check['shape']['d_model']}, "
                f"{check['shape']['num_layers']}+{check['shape']['num_decoder_layers']} layers)"
                for name, check in sorted(device.get("models", {}).items())
                if "parameters" in check
            )
            or "–"
        )
        + ".",
        "- A step is one optimizer step of one micro batch on one GPU; random token ids of the lengths shown "
        "(in→out; KNIFE: input+rationale→answer), randomly initialised weights. Step time is the median of the "
        "timed steps after warm-up. tokens/s counts the trained model's encoder and decoder tokens; TFLOP/s and "
        "MFU use the model FLOPs of trainer/perf/flops.py (a KNIFE step includes its teacher's forward), HFU "
        "adds the recomputation of gradient checkpointing. Peak memory is torch.cuda.max_memory_allocated / "
        "max_memory_reserved of the case's own process; plan is the memory planner's figure for the case's config "
        "(trainer.planning: model states + activations + a KNIFE teacher's states, without its CUDA/NCCL runtime "
        "allowance, which the allocator does not count), and peak / plan divides the peak allocated by it.",
        "",
    ]
    for suite, keys in summary["suites"].items():
        lines += [f"## {SUITE_TITLES[suite]}", "", CASE_HEADER, "|" + "---|" * (CASE_HEADER.count(" | ") + 1)]
        lines += [case_row(results[key]) for key in keys if key in results]
        missing = [key for key in keys if key not in results]
        if missing:
            lines += ["", f"Not run yet (time budget): {', '.join(f'`{k}`' for k in missing)}."]
        lines.append("")
    lines += ["## Comparisons", ""]
    for item in comp["strategy_over_plain"]:
        lines.append(
            f"- `{item['key']}`: {item['ratio']:.3f}× the plain loop's step time (target ≤ {PLAIN_RATIO_TARGET})."
        )
    for item in comp["checkpointing_on_over_off"]:
        memory = "–" if item["memory_ratio"] is None else f"{item['memory_ratio']:.2f}×"
        lines.append(
            f"- `{item['key']}`: checkpointing costs {item['time_ratio']:.2f}× the step time, {memory} the peak memory."
        )
    for item in comp["optimizer_torch_over_fused"]:
        lines.append(f"- `{item['key']}`: torch AdamW takes {item['torch_over_fused']:.2f}× the FusedAdam step time.")
    if comp["best_micro_batch"]:
        best = comp["best_micro_batch"]
        lines.append(
            f"- Best micro batch: {best['micro_batch_size']} ({best['samples_per_s']:.1f} samples/s, "
            f"{best['tokens_per_s']:.0f} tokens/s)."
        )
    if not any(comp[k] for k in ("strategy_over_plain", "checkpointing_on_over_off", "optimizer_torch_over_fused")):
        lines.append("- No pair of comparable measurements yet.")
    lines += ["", "## End to end through ray_jobs.submit", ""]
    if summary["e2e"]:
        lines += [
            "| model | template | precision | device | status | steps | job wall s | train wall s | samples/s "
            "(median window) | dev accuracy |",
            "|" + "---|" * 10,
        ]
        for run in summary["e2e"]:
            lines.append(
                f"| {run['model']} | {run['template']} | {run['precision']} | {'cuda' if run['use_gpu'] else 'cpu'} "
                f"| {run['status']} | {_num(run.get('steps'), '.0f')} | {_num(run.get('job_wall_s'), '.0f')} "
                f"| {_num(run.get('train_wall_time_s'), '.0f')} | {_num(run.get('samples_per_s'), '.1f')} "
                f"| {_num(run.get('dev_accuracy'), '.3f')} |"
            )
        lines += ["", f"Command: `{summary['e2e'][-1]['command']}`"]
    else:
        lines.append("Not run yet.")
    targets = comp["targets"]
    mfu, plan = targets["t5_3b_mfu"], targets["memory_within_plan"]
    lines += [
        "",
        "## Targets",
        "",
        f"- t5-3b bf16 MFU ≥ {MFU_TARGET:.0%}: {_verdict(mfu['met'])} (best {_pct(mfu['value'])}, `{mfu['key']}`).",
        f"- Strategy within {PLAIN_RATIO_TARGET}× the plain loop: {_verdict(targets['strategy_within_plain']['met'])}.",
        f"- Peak memory within {MEMORY_PLAN_TARGET - 1:.0%} of the memory plan: {_verdict(plan['met'])} "
        + (
            f"(worst peak / plan {plan['worst']:.2f}, `{plan['key']}`, of {plan['cases']} GPU case(s))."
            if plan["key"]
            else "(no GPU case with a planned figure ran)."
        ),
        "",
    ]
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return {None: "not measured", True: "met", False: "not met"}[met]
