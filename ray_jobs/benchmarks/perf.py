"""Performance benchmark: the DeepSpeed strategy against plain torch DDP, Ray's overhead split into its parts,
evaluation throughput. Writes <out>/results.md and <out>/results.json.

    python -m ray_jobs.benchmarks.perf                                   # ~13 min on 2 idle CPU cores
    python -m ray_jobs.benchmarks.perf --quick --out /tmp/perf           # ~4 min: t5-tiny, fewer cases
    python -m ray_jobs.benchmarks.perf --parts imports,ray --ray-rounds 3  # the start-up targets alone
    python -m ray_jobs.benchmarks.perf_report <out>/results.json         # the report again, from its results

This module measures; ray_jobs.benchmarks.perf_report renders results.md (with the start-up targets) from the
results.json it saves. Parts (each figure measured side by side in one run, so machine noise cancels in the ratios):
- imports: `import trainer.loop` against `import torch, transformers`, each in fresh interpreters, rounds
  alternating, medians and their ratio, and which heavy modules the loop's import loaded;
- steps: `ray_jobs.benchmarks.perf_steps time` under torchrun (2 ranks, gloo), the strategy's ZeRO-1/2/3 and
  ZeRO-3 with parameter offload against a DDP loop kept alive in the same processes, blocks alternating; also the
  buckets the resolver used before (hidden_size²) and ZeRO-3 with DeepSpeed's own prefetch defaults; per preset;
- memory: peak RSS per rank of each loop, each in fresh processes;
- hf: transformers' Seq2SeqTrainer on the strategy's resolved ZeRO-2 config, between two DDP blocks;
- eval: examples/s of greedy generation and of choice scoring (one process, the evaluator's own functions);
- ray: a 3-stage pipeline submitted with `ray_jobs.submit` on a fresh local head, with timeline markers
  (trainer.tracking.timeline) splitting its wall time into head start, submit → driver, driver → worker group,
  per-stage set-up, training, evaluation, export + MLflow logging, and head stop; run twice, its stages on one
  shared worker group (the default) and on a worker group each (`pipeline.reuse_workers: false`); with
  `--ray-rounds N` each N times, keeping the run with the median submit → first step (`--ray-modes` picks the
  modes).

Every part records the load average (1/5/15 min) at its start: the figures are only as quiet as the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_jobs.benchmarks.perf_report import render
from trainer.tracking.timeline import TIMELINE_ENV, parse_marks

REPO_ROOT = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
PARTS = ("imports", "steps", "memory", "hf", "eval", "ray")


@dataclass(frozen=True)
class Plan:
    """What one benchmark run measures; `quick` keeps it to a few minutes."""

    step_cases: dict[str, list[str]]  # preset -> strategy loops timed against DDP
    rounds: dict[str, int]  # preset -> alternating blocks
    steps: dict[str, int]  # preset -> steps per block
    memory_preset: str
    memory_loops: list[str]
    hf_preset: str | None
    eval_examples: int
    ray_steps: int
    ray_stages: int
    import_rounds: int

    @classmethod
    def build(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                step_cases={"t5-tiny": ["zero1", "zero2", "zero3"]},
                rounds={"t5-tiny": 3},
                steps={"t5-tiny": 5},
                memory_preset="t5-tiny",
                memory_loops=["ddp", "zero2"],
                hf_preset=None,
                eval_examples=32,
                ray_steps=4,
                ray_stages=2,
                import_rounds=3,
            )
        main_loops = [
            "zero1",
            "zero2",
            "zero3",
            "zero3-offload-param",
            "zero1-hidden2-buckets",
            "zero2-hidden2-buckets",
            "zero3-deepspeed-defaults",
        ]
        return cls(
            step_cases={"t5-tiny": ["zero1", "zero2", "zero3"], "t5-mini": main_loops, "t5-small": ["zero2", "zero3"]},
            rounds={"t5-tiny": 4, "t5-mini": 4, "t5-small": 2},
            steps={"t5-tiny": 8, "t5-mini": 8, "t5-small": 3},
            memory_preset="t5-mini",
            memory_loops=["ddp", "zero1", "zero2", "zero3", "zero3-offload-param"],
            hf_preset="t5-mini",
            eval_examples=128,
            ray_steps=30,
            ray_stages=3,
            import_rounds=7,
        )


# ---- import cost ----------------------------------------------------------------------------------------------
IMPORT_BASELINE = "import torch, transformers"
IMPORT_LOOP = "import trainer.loop"
# What the loop's import should leave to the code that needs it (tracking, the feature cache, the strategy, models).
HEAVY_MODULES = ("mlflow", "datasets", "deepspeed", "transformers.modeling_utils", "torch._inductor.compile_fx")


def time_import(statement: str, report_modules: tuple[str, ...] = ()) -> tuple[float, dict[str, bool]]:
    """Seconds `statement` takes in a fresh interpreter (its start-up left out), and which of `report_modules`
    it left loaded."""
    probe = (
        "import json, sys, time\n"
        "began = time.perf_counter()\n"
        f"{statement}\n"
        "seconds = time.perf_counter() - began\n"
        f"print(json.dumps({{'s': seconds, 'loaded': {{m: m in sys.modules for m in {list(report_modules)!r}}}}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, env=_env(), timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{statement!r} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    return measured["s"], measured["loaded"]


def measure_imports(plan: Plan, work: Path) -> dict[str, Any]:
    """The loop's import against torch + transformers', alternating so a burst of load hits both alike."""
    print(f"[perf] imports: {IMPORT_LOOP!r} vs {IMPORT_BASELINE!r}, {plan.import_rounds} rounds", flush=True)
    load_average = list(os.getloadavg())
    baseline, loop = [], []
    loaded: dict[str, bool] = {}
    try:
        for _ in range(plan.import_rounds):
            baseline.append(time_import(IMPORT_BASELINE)[0])
            seconds, loaded = time_import(IMPORT_LOOP, HEAVY_MODULES)
            loop.append(seconds)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc), "load_average": load_average}
    baseline_s, loop_s = statistics.median(baseline), statistics.median(loop)
    return {
        "baseline": IMPORT_BASELINE,
        "loop": IMPORT_LOOP,
        "rounds": plan.import_rounds,
        "baseline_rounds": baseline,
        "loop_rounds": loop,
        "baseline_s": baseline_s,
        "loop_s": loop_s,
        "ratio": loop_s / baseline_s,
        "loop_loads": loaded,
        "load_average": load_average,
    }


# ---- two-rank step timing -------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DS_ACCELERATOR": "cpu",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONPATH": python_path,
        **extra,
    }


def run_child(command: list[str], timeout_s: float, **popen: Any) -> tuple[int | None, str]:
    """Run a child to its end or `timeout_s` (returncode None): (returncode, its captured stdout when piped).
    On a timeout, or when this benchmark is stopped, the child gets SIGTERM, not subprocess.run's SIGKILL:
    a submitter then stops the local Ray head it started instead of orphaning it."""
    with subprocess.Popen(command, text=True, **popen) as proc:
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except BaseException as exc:
            proc.terminate()
            try:
                stdout, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            return None, stdout or ""
    return proc.returncode, stdout or ""


def run_ranks(args: list[str], out: Path, log: Path, timeout_s: float = 900) -> dict[str, Any]:
    """`perf_steps` on two torchrun ranks; returns rank 0's JSON, or {"error": ...} with the log's tail."""
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc-per-node",
        str(WORLD_SIZE),
        "-m",
        "ray_jobs.benchmarks.perf_steps",
        *args,
        "--out",
        str(out),
    ]
    with log.open("w") as handle:
        code, _ = run_child(command, timeout_s, stdout=handle, stderr=subprocess.STDOUT, env=_env())
    if code != 0 or not out.is_file():
        return {"error": ("timed out: " if code is None else f"exit {code}: ") + log.read_text()[-1500:]}
    return json.loads(out.read_text())


def measure_steps(plan: Plan, work: Path) -> list[dict[str, Any]]:
    results = []
    for preset, loops in plan.step_cases.items():
        print(f"[perf] steps: {preset} DDP vs {', '.join(loops)}", flush=True)
        args = ["time", "--shape", preset, "--loops", ",".join(loops)]
        args += ["--rounds", str(plan.rounds[preset]), "--steps", str(plan.steps[preset])]
        timing = run_ranks(args, work / f"steps-{preset}.json", work / f"steps-{preset}.log")
        results.append({"shape": preset, **timing})
    return results


def measure_memory(plan: Plan, work: Path) -> list[dict[str, Any]]:
    results = []
    for loop in plan.memory_loops:
        print(f"[perf] memory: {plan.memory_preset} {loop}", flush=True)
        name = f"memory-{plan.memory_preset}-{loop}"
        args = ["memory", "--shape", plan.memory_preset, "--loop", loop, "--steps", "3"]
        results.append({"loop": loop, **run_ranks(args, work / f"{name}.json", work / f"{name}.log")})
    return results


def measure_hf(plan: Plan, work: Path) -> dict[str, Any] | None:
    if plan.hf_preset is None:
        return None
    print(f"[perf] HF Seq2SeqTrainer: {plan.hf_preset}", flush=True)
    args = ["hf", "--shape", plan.hf_preset, "--rounds", "2", "--steps", "8"]
    return run_ranks(args, work / "hf.json", work / "hf.log")


# ---- evaluation throughput ------------------------------------------------------------------------------------
def measure_eval(plan: Plan, work: Path) -> list[dict[str, Any]]:
    """Answer-only (ft_io) and rationale-then-answer (ft_iro) outputs: their generation budgets differ ~30x."""
    return [eval_throughput(plan, work, method) for method in ("ft_io", "ft_iro")]


def eval_throughput(
    plan: Plan, work: Path, method_name: str, preset: str = "t5-mini", batch_size: int = 32
) -> dict[str, Any]:
    """Greedy generation and choice scoring timed apart on the same batches, with the evaluator's own calls, in
    this process (one rank: evaluation shards examples across ranks without communicating until the end). The
    model is randomly initialised, so generation runs to its full budget: the worst case of a trained model."""
    import torch

    from trainer.config.loader import load_config
    from trainer.data.formatting import tokenizer_corpus
    from trainer.data.registry import load_splits
    from trainer.evaluation.choice_scoring import score_choices
    from trainer.evaluation.evaluator import _decode, _fresh
    from trainer.methods.registry import method_class
    from trainer.methods.seq2seq import Seq2SeqMethod
    from trainer.models.factory import build_model, build_model_config, build_tokenizer

    print(f"[perf] eval: {preset} {method_name}, {plan.eval_examples} examples", flush=True)
    torch.set_num_threads(1)
    cfg = load_config(
        overrides=[
            f"model.name={preset}",
            "data.dataset=synthetic",
            f"data.max_dev_examples={plan.eval_examples}",
            f"method.name={method_name}",
            f"run.output_dir={work / 'eval'}",
        ]
    )
    splits = load_splits(cfg.data, cfg.run.seed)
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus(splits.train), broadcast=lambda x: x)
    method = method_class(cfg)(cfg, tokenizer)
    assert isinstance(method, Seq2SeqMethod), f"{cfg.method.name}: the inference profile measures seq2seq students"
    torch.manual_seed(0)
    model = build_model(cfg.model, build_model_config(cfg.model, tokenizer)).eval()
    dev = splits.dev
    timings = {"encoder": 0.0, "generation": 0.0, "choice_scoring": 0.0}
    generated_tokens = 0
    with torch.no_grad():
        for start in range(0, len(dev), batch_size):
            examples = dev[start : start + batch_size]
            batch = method.collate([method.eval_features(ex) for ex in examples])
            began = time.perf_counter()
            encoder_outputs, mask = method.encoder_pass(model, batch)
            encoded = time.perf_counter()
            output = model.generate(
                encoder_outputs=_fresh(encoder_outputs),
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=method.max_new_tokens(),
            )
            generated = time.perf_counter()
            greedy = _decode(method, output)
            prefixes = [method.encode_plain(method.scoring_prefix(text)) for text in greedy]
            choices = [method.choice_continuations(ex) for ex in examples]
            scored_from = time.perf_counter()
            score_choices(model, encoder_outputs, mask, prefixes, choices)
            scored = time.perf_counter()
            timings["encoder"] += encoded - began
            timings["generation"] += generated - encoded
            timings["choice_scoring"] += scored - scored_from
            generated_tokens += int(output.shape[0] * (output.shape[1] - 1))
    n = len(dev)
    return {
        "preset": preset,
        "method": cfg.method.name,
        "examples": n,
        "batch_size": batch_size,
        "max_new_tokens": method.max_new_tokens(),
        "choices_per_example": statistics.mean(len(ex.choices) for ex in dev),
        "seconds": timings,
        "generation_examples_per_s": n / timings["generation"],
        "choice_scoring_examples_per_s": n / timings["choice_scoring"],
        "encoder_examples_per_s": n / timings["encoder"],
        "generated_tokens_per_s": generated_tokens / timings["generation"],
    }


# ---- Ray overhead ---------------------------------------------------------------------------------------------
RAY_MODES = {"shared_workers": True, "worker_group_per_stage": False}  # name -> pipeline.reuse_workers


def ray_pipeline(plan: Plan, reuse_workers: bool) -> dict[str, Any]:
    """ft_io, ft_io again under another seed (its features come from the cache) and (full plan) ft_ior."""
    stages: list[dict[str, Any]] = [
        {"name": "ft_io", "overrides": {"method": {"name": "ft_io"}}},
        {"name": "ft_io_seed1", "overrides": {"method": {"name": "ft_io"}, "run": {"seed": 1}}},
        {"name": "ft_ior", "overrides": {"method": {"name": "ft_ior"}}},
    ][: plan.ray_stages]
    return {
        "pipeline": {
            "name": "perf",
            "base": {
                "model": {"name": "t5-tiny", "tokenizer_vocab_size": 400},
                "data": {
                    "dataset": "synthetic",
                    "rationale_source": "llm_first",
                    "max_dev_examples": 32,
                    "max_input_length": 64,
                    "max_rationale_length": 48,
                    "max_target_length": 6,
                },
                "optim": {"max_steps": plan.ray_steps, "micro_batch_size": 16, "warmup_steps": 1},
                "ds": {"template": "zero2"},
                "run": {"num_workers": WORLD_SIZE, "output_dir": "runs"},
                "tracking": {"experiment": "perf", "log_every": 10},
            },
            "stages": stages,
            "reuse_workers": reuse_workers,
        }
    }


def measure_ray(plan: Plan, work: Path, rounds: int = 1, modes: tuple[str, ...] = tuple(RAY_MODES)) -> dict[str, Any]:
    """The pipeline submitted on a fresh local head (no --address) with its stages on one shared worker group,
    then with a worker group per stage; timeline marks on, so the phases come from one clock. With several
    rounds (modes alternating) each mode keeps the run with the median submit → first step."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for index in range(rounds):
        for mode in modes:
            reuse = RAY_MODES[mode]
            directory = work / "ray" / (mode if rounds == 1 else f"{mode}-{index + 1}")
            load_average = list(os.getloadavg())
            runs[mode].append({**submit_pipeline(plan, directory, reuse), "load_average": load_average})
    return {mode: median_run(mode_runs) for mode, mode_runs in runs.items()}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median submit → first step (the lower middle of an even count), with every run's figure;
    a failed run counts as the slowest, and the first failure is kept when no run succeeded."""
    ok = sorted(
        (r for r in runs if r.get("submit_to_first_step_s") is not None), key=lambda r: r["submit_to_first_step_s"]
    )
    if not ok:
        return runs[0]
    failed = len(runs) - len(ok)
    chosen = ok[min((len(runs) - 1) // 2, len(ok) - 1)]
    return {
        **chosen,
        "submit_to_first_step_rounds": [r.get("submit_to_first_step_s") for r in runs],
        "failed_rounds": failed,
    }


def submit_pipeline(plan: Plan, directory: Path, reuse_workers: bool) -> dict[str, Any]:
    print(
        f"[perf] ray: {plan.ray_stages}-stage pipeline, {plan.ray_steps} steps a stage, reuse_workers={reuse_workers}",
        flush=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "pipeline.yaml"
    config.write_text(yaml.safe_dump(ray_pipeline(plan, reuse_workers)))
    started = time.time()
    code, output = run_child(
        [sys.executable, "-m", "ray_jobs.submit", str(config)],
        1200,
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(**{TIMELINE_ENV: "1"}),
    )
    ended = time.time()
    (directory / "submit.log").write_text(output)
    if code != 0:
        return {"error": ("timed out: " if code is None else f"exit {code}: ") + output[-1500:]}
    return {"wall_s": ended - started, **ray_phases(parse_marks(output.splitlines()), started, ended)}


def ray_phases(marks: list[dict[str, Any]], started: float, ended: float) -> dict[str, Any]:
    """Seconds per phase from the submitter's, the driver's and rank 0's markers (one clock on one machine).

    A stage that starts a worker group counts the group's start (new processes, their imports) in its set-up;
    a stage that reuses the group starts at its own `stage.start`."""

    def at(event: str, after: float = 0.0) -> float | None:
        return next((m["t"] for m in marks if m["event"] == event and m["t"] >= after), None)

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    stage_starts = [m for m in marks if m["event"] == "stage.start"]
    group_starts = [m["t"] for m in marks if m["event"] == "group.start"]
    stages = []
    for index, start_mark in enumerate(stage_starts):
        previous = stage_starts[index - 1]["t"] if index else 0.0
        following = stage_starts[index + 1]["t"] if index + 1 < len(stage_starts) else ended
        opened = [t for t in group_starts if previous < t <= start_mark["t"]]
        t0 = opened[-1] if opened else start_mark["t"]
        stage_end = at("stage.end", start_mark["t"])
        group_end = at("group.end", stage_end or start_mark["t"])
        last_in_group = group_end is not None and group_end <= following
        end = group_end if last_in_group else stage_end
        inside = [m for m in marks if t0 <= m["t"] <= (end or ended)]

        def first(event: str, inside: list[dict[str, Any]] = inside) -> float | None:
            return next((m["t"] for m in inside if m["event"] == event), None)

        stages.append(
            {
                "stage": start_mark.get("stage", str(index)),
                "worker_group_s": span(t0, first("worker.start")) if opened else 0.0,
                # The worker group's start, split: Ray Train's controller and worker actors (new processes),
                # the worker's boot until the train function runs (Ray, process group), its imports.
                "worker_actors_s": span(t0, first("worker.process")) if opened else None,
                "worker_boot_s": span(first("worker.process"), first("worker.train_fn")) if opened else None,
                "worker_imports_s": span(first("worker.train_fn"), first("worker.start")) if opened else None,
                "process_group_s": span(start_mark["t"], first("worker.fit")),
                "data_tokenizer_features_s": span(first("worker.fit"), first("worker.features")),
                "model_engine_s": span(first("worker.features"), first("worker.engine")),
                "to_first_step_s": span(first("worker.engine"), first("worker.first_step")),
                "setup_s": span(t0, first("worker.first_step")),
                "training_s": span(first("worker.first_step"), first("worker.trained")),
                "evaluation_s": span(first("worker.trained"), first("worker.evaluated")),
                "export_mlflow_s": span(first("worker.evaluated"), first("worker.exported")),
                "teardown_s": span(first("worker.exported"), end),
                "stage_s": span(t0, end),
            }
        )
    submitter_start = at("submit.process")
    first_step = at("worker.first_step")
    return {
        "head_start_s": span(at("head.start"), at("head.ready")),
        "submitter_start_s": span(submitter_start, at("head.start")),
        "submit_to_driver_s": span(at("submit.submitted"), at("driver.process")),
        "driver_start_s": span(at("driver.process"), at("driver.start")),
        "driver_to_first_stage_s": span(at("driver.start"), group_starts[0] if group_starts else None),
        "submit_to_first_step_s": span(at("submit.submitted"), first_step),
        "command_to_first_step_s": span(submitter_start, first_step),
        "job_end_to_submitter_s": span(
            at("group.end", stage_starts[-1]["t"]) if stage_starts else None, at("submit.job_ended")
        ),
        "head_stop_s": span(at("head.stop"), at("head.stopped")),
        "stages": stages,
        "marks": len(marks),
    }


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # unwinds: children get SIGTERM
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_results/perf"))
    parser.add_argument("--quick", action="store_true", help="t5-tiny and the main cases only (~4 min)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)}",
    )
    parser.add_argument("--ray-rounds", type=int, default=1, help="submissions per Ray mode; the median run is kept")
    parser.add_argument(
        "--ray-modes", default=",".join(RAY_MODES), help=f"comma-separated subset of {','.join(RAY_MODES)}"
    )
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown part(s) {sorted(unknown)}; known: {','.join(PARTS)}")
    ray_modes = tuple(args.ray_modes.split(","))
    if set(ray_modes) - set(RAY_MODES):
        parser.error(
            f"--ray-modes: unknown mode(s) {sorted(set(ray_modes) - set(RAY_MODES))}; known: {','.join(RAY_MODES)}"
        )
    if args.ray_rounds < 1:
        parser.error("--ray-rounds must be at least 1")
    from ray_jobs.benchmarks.perf_steps import BATCH, INPUT_LENGTH, TARGET_LENGTH

    plan = Plan.build(args.quick)
    parts = set(args.parts.split(","))
    out: Path = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    runners: dict[str, Callable[[Plan, Path], Any]] = {
        "imports": measure_imports,
        "steps": measure_steps,
        "memory": measure_memory,
        "hf": measure_hf,
        "eval": measure_eval,
        "ray": lambda plan, work: measure_ray(plan, work, args.ray_rounds, ray_modes),
    }
    result: dict[str, Any] = {
        "command": "python -m ray_jobs.benchmarks.perf " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "batch": BATCH,
        "input_length": INPUT_LENGTH,
        "target_length": TARGET_LENGTH,
        "plan": plan.__dict__,
        "imports": None,
        "steps": [],
        "memory": [],
        "hf": None,
        "eval": None,
        "ray": None,
    }
    for name, run in runners.items():
        if name in parts:
            result[name] = run(plan, work)
    result["wall_s"] = time.monotonic() - began
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(render(result))
    print(f"[perf] wrote {out / 'results.md'} in {result['wall_s'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
