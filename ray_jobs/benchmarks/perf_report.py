"""The performance benchmark's report: results.md from the results.json `ray_jobs.benchmarks.perf` writes.

Nothing here measures, so `python -m ray_jobs.benchmarks.perf_report <out>/results.json` redoes the report (e.g.
after a change to it) without rerunning anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

IMPORT_RATIO_TARGET = 1.3  # `import trainer.loop` over `import torch, transformers`, same environment
FIRST_STEP_TARGET_S = 20.0  # submit -> first training step on a fresh local head, shared worker group


def _load(load_average: list[float] | None) -> str:
    return "load —" if not load_average else "load " + " / ".join(f"{v:.1f}" for v in load_average)


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "**met**" if value <= target else "**not met**"


def render_targets(result: dict[str, Any]) -> list[str]:
    """The two start-up targets, each beside the machine's load average (1/5/15 min) when it was measured."""
    import_target = f"`import trainer.loop` ≤ {IMPORT_RATIO_TARGET}× `import torch, transformers`"
    step_target = f"submit → first training step ≤ {FIRST_STEP_TARGET_S:.0f} s (local head, shared worker group)"
    lines = ["## Start-up targets", "", "| target | measured | | load average at the start |", "|---|---|---|---|"]
    imports = result.get("imports")
    if imports and "error" not in imports:
        ratio = imports["ratio"]
        lines.append(
            f"| {import_target} | {ratio:.2f}× ({imports['loop_s']:.2f} s vs {imports['baseline_s']:.2f} s, "
            f"medians of {imports['rounds']}) | {_verdict(ratio, IMPORT_RATIO_TARGET)} | "
            f"{_load(imports.get('load_average'))} |"
        )
    else:
        lines.append(f"| {import_target} | — | not measured | |")
    shared = (result.get("ray") or {}).get("shared_workers")
    if shared and "error" not in shared:
        first = shared["submit_to_first_step_s"]
        rounds = shared.get("submit_to_first_step_rounds") or [first]
        runs = ", ".join(_num(v, ".1f") for v in rounds)
        spread = f"median of {len(rounds)}: {runs}" if len(rounds) > 1 else "1 run"
        lines.append(
            f"| {step_target} | {_num(first, '.1f')} s ({spread}) | {_verdict(first, FIRST_STEP_TARGET_S)} | "
            f"{_load(shared.get('load_average'))} |"
        )
    else:
        lines.append(f"| {step_target} | — | not measured | |")
    return [*lines, ""]


def render_imports(imports: dict[str, Any]) -> list[str]:
    lines = ["## Import cost", ""]
    if "error" in imports:
        return [*lines, f"Did not run: `{imports['error'][-500:]}`", ""]
    heavy = imports.get("loop_loads") or {}
    loaded = [name for name, present in heavy.items() if present]
    lines += [
        f"Each statement in a fresh interpreter, {imports['rounds']} rounds alternating, timed inside the process "
        "(interpreter start-up left out), medians:",
        "",
        "| statement | median s | rounds s |",
        "|---|---|---|",
        f"| `{imports['baseline']}` | {imports['baseline_s']:.2f} | "
        f"{', '.join(f'{v:.2f}' for v in imports['baseline_rounds'])} |",
        f"| `{imports['loop']}` | {imports['loop_s']:.2f} | {', '.join(f'{v:.2f}' for v in imports['loop_rounds'])} |",
        "",
        f"Ratio {imports['ratio']:.2f}× (target ≤ {IMPORT_RATIO_TARGET}×). Heavy modules `{imports['loop']}` loads: "
        + (", ".join(f"`{name}`" for name in loaded) if loaded else "none of " + ", ".join(f"`{n}`" for n in heavy))
        + ".",
        "",
    ]
    return lines


def _num(value: Any, fmt: str = ".0f") -> str:
    return "—" if value is None else format(value, fmt)


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Performance benchmark",
        "",
        f"Command: `{result['command']}` ({result['wall_s'] / 60:.1f} min, {result['machine']}). Every ratio "
        "compares steps taken seconds apart in the same two processes (torchrun, gloo, OMP_NUM_THREADS=1), "
        f"batch {result['batch']} per rank, input {result['input_length']}, target {result['target_length']}, "
        "torch AdamW everywhere.",
        "",
        *render_targets(result),
        *(render_imports(result["imports"]) if result.get("imports") else []),
        "## Strategy vs plain DDP",
        "",
        "| model | params | loop | ms/step | samples/s | DDP ms/step | vs DDP | buckets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in result["steps"]:
        if "error" in shape:
            lines.append(f"| {shape['shape']} | | error: {shape['error'][:120]!r} | | | | | |")
            continue
        for loop in shape["loops"]:
            zero = loop.get("zero_optimization", {})
            buckets = ", ".join(f"{k.replace('_bucket_size', '')} {v:,}" for k, v in zero.items() if "bucket" in k)
            lines.append(
                f"| {shape['shape']} | {shape['parameters'] / 1e6:.1f}M | {loop['loop']} | {loop['ms_per_step']:.0f} | "
                f"{loop['samples_per_s']:.0f} | {loop['ddp_ms_per_step']:.0f} | {loop['vs_ddp']:.2f} | {buckets} |"
            )
    hf = result.get("hf")
    if hf:
        if "error" in hf:
            lines += ["", f"HF Seq2SeqTrainer (ZeRO-2): did not run here: `{hf['error'][-300:]}`"]
        else:
            lines += [
                "",
                f"HF `Seq2SeqTrainer` with the same resolved ZeRO-2 config ({hf['shape']}, use_cpu=True): "
                f"{hf['ms_per_step']:.0f} ms/step, {hf['samples_per_s']:.0f} samples/s, {hf['vs_ddp']:.2f}x DDP "
                f"({hf['ddp_ms_per_step']:.0f} ms/step).",
            ]
    lines += ["", "## Peak RSS per rank", "", "| model | loop | rank 0 MB | rank 1 MB | before the model MB |"]
    lines += ["|---|---|---|---|---|"]
    for row in result["memory"]:
        if "error" in row:
            lines.append(f"| {result['plan']['memory_preset']} | {row['loop']} | error | | |")
            continue
        ranks = row["ranks"]
        lines.append(
            f"| {row['shape']} | {row['loop']} | {ranks[0]['peak_rss_mb']:.0f} | {ranks[1]['peak_rss_mb']:.0f} | "
            f"{ranks[0]['rss_before_mb']:.0f} |"
        )
    if result["eval"]:
        lines += [
            "",
            "## Evaluation throughput",
            "",
            "One process, randomly initialised t5-mini (generation runs to its full budget), batches of 32; the "
            "evaluator's greedy generation and its choice scoring (every choice in one decoder pass after the "
            "generated answer prefix) timed apart on the same batches.",
            "",
            "| method | examples | new tokens | generation ex/s | tokens/s | choice scoring ex/s | encoder ex/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for ev in result["eval"]:
            lines.append(
                f"| {ev['method']} | {ev['examples']} | ≤{ev['max_new_tokens']} | "
                f"{ev['generation_examples_per_s']:.0f} | {ev['generated_tokens_per_s']:.0f} | "
                f"{ev['choice_scoring_examples_per_s']:.0f} | {ev['encoder_examples_per_s']:.0f} |"
            )
    if result["ray"]:
        lines += ["", "## Ray overhead", ""]
        for mode, ray in result["ray"].items():
            lines += render_ray(mode, ray, result["plan"]["ray_steps"])
    lines.append("")
    return "\n".join(lines)


def render_ray(mode: str, ray: dict[str, Any], steps: int) -> list[str]:
    title = {"shared_workers": "One worker group shared by the stages (the default)"}.get(
        mode, "A worker group per stage (`pipeline.reuse_workers: false`)"
    )
    lines = [f"### {title}", ""]
    if "error" in ray:
        return [*lines, f"The Ray run failed: `{ray['error'][-500:]}`", ""]
    rounds = ray.get("submit_to_first_step_rounds") or []
    median_of = f" The run with the median submit → first step of {len(rounds)} is shown." if len(rounds) > 1 else ""
    lines += [
        f"`python -m ray_jobs.submit` of a {len(ray['stages'])}-stage pipeline (t5-tiny, ZeRO-2, 2 workers, "
        f"{steps} steps a stage) with no address: {ray['wall_s']:.0f} s in all ({_load(ray.get('load_average'))} "
        f"at its start).{median_of}",
        "",
        "| phase | s |",
        "|---|---|",
        f"| submitter start-up (interpreter, imports, preflight) | {_num(ray['submitter_start_s'], '.1f')} |",
        f"| local head start | {_num(ray['head_start_s'], '.1f')} |",
        f"| submit → job driver process | {_num(ray['submit_to_driver_s'], '.1f')} |",
        f"| driver start-up (imports) | {_num(ray['driver_start_s'], '.1f')} |",
        f"| driver → first worker group | {_num(ray['driver_to_first_stage_s'], '.1f')} |",
        f"| **submit → first training step** | **{_num(ray['submit_to_first_step_s'], '.1f')}** |",
        f"| command → first training step | {_num(ray['command_to_first_step_s'], '.1f')} |",
        f"| last worker group end → submitter sees the job end | {_num(ray['job_end_to_submitter_s'], '.1f')} |",
        f"| **local head stop** | **{_num(ray['head_stop_s'], '.1f')}** |",
        "",
        "Per stage (worker group: its start, new processes and their imports, counted in the stage that opens it):",
        "",
        "| stage | worker group | process group | data + features | model + engine | → first step | "
        "**set-up** | training | evaluation | export + MLflow | teardown | stage |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in ray["stages"]:
        cells = [
            s["worker_group_s"], s["process_group_s"], s["data_tokenizer_features_s"], s["model_engine_s"],
            s["to_first_step_s"],
        ]  # fmt: skip
        after = [s[k] for k in ("training_s", "evaluation_s", "export_mlflow_s", "teardown_s", "stage_s")]
        lines.append(
            f"| {s['stage']} | {' | '.join(_num(c, '.1f') for c in cells)} | **{_num(s['setup_s'], '.1f')}** | "
            f"{' | '.join(_num(c, '.1f') for c in after)} |"
        )
    opened = [s for s in ray["stages"] if s.get("worker_actors_s") is not None]
    lines += [
        "",
        "Each worker group's start: Ray Train's controller and worker actors (new processes), a worker's boot until "
        "Ray Train calls the train function (Ray worker, actor, torch process group), then the train function's "
        "imports (torch, transformers, DeepSpeed, datasets, MLflow):",
        "",
        "| opened by stage | actors | worker boot | imports | worker group |",
        "|---|---|---|---|---|",
        *(
            f"| {s['stage']} | {_num(s['worker_actors_s'], '.1f')} | {_num(s['worker_boot_s'], '.1f')} | "
            f"{_num(s['worker_imports_s'], '.1f')} | {_num(s['worker_group_s'], '.1f')} |"
            for s in opened
        ),
    ]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results.json the benchmark wrote; results.md goes beside it")
    args = parser.parse_args(argv)
    try:
        result = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        parser.error(f"{args.results}: not a results file the benchmark wrote ({exc})")
    out = args.results.with_name("results.md")
    out.write_text(render(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
