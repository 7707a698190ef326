"""Real memory of DeepSpeed training steps on CPU against the planner's figure (trainer.planning).

    python -m ray_jobs.benchmarks.memory_benchmark --out bench_results/memory             # t5-small, t5-base; ZeRO-2, 3
    python -m ray_jobs.benchmarks.memory_benchmark --out /tmp/mem --models t5-tiny --steps 1   # smoke size

Each case runs two DeepSpeed ranks (gloo, one process each) of a randomly initialised preset, built and
wrapped exactly as a training run does (factory, DeepSpeedStrategy, the ft_io method's loss), for a few
optimizer steps on random tokens. Every rank records its resident set before the model exists (the baseline:
Python, torch, DeepSpeed, the process group) and its high-water mark (VmHWM) after the steps. The difference is
what training added; the planner's figure for the same setup (CPU attention kernel, fp32) is model states +
activations. Host-side copies the GPU figures do not show (the fp32 model built whole on every rank before
ZeRO flattens and partitions it, allocator slack) make the measured peak larger; the steady resident set after
the steps is reported too. Writes <out>/results.md and <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.perf.process_memory import proc_status_kib

MIB = 2**20
WORLD_SIZE = 2


@dataclass(frozen=True)
class Case:
    model: str
    zero_stage: int
    micro_batch_size: int
    source_length: int
    target_length: int
    steps: int
    gradient_checkpointing: bool = False

    @property
    def label(self) -> str:
        return f"{self.model} ZeRO-{self.zero_stage}{' +ckpt' if self.gradient_checkpointing else ''}"


def run_rank(case: Case, result_file: Path) -> None:
    """One rank of a case (started by `run_case` with RANK, WORLD_SIZE, MASTER_ADDR/PORT in its environment)."""
    import torch

    from trainer.config.loader import load_config
    from trainer.methods.registry import method_class
    from trainer.models.factory import build_model, build_model_config, build_tokenizer, count_parameters
    from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy
    from trainer.strategy.protocols import as_torch_module

    cfg = load_config(
        overrides=[
            f"model.name={case.model}",
            "model.init=random",
            "model.tokenizer_vocab_size=500",
            f"model.gradient_checkpointing={str(case.gradient_checkpointing).lower()}",
            f"ds.zero_stage={case.zero_stage}",
            f"ds.template=zero{case.zero_stage}",
            "ds.precision=fp32",
            "method.name=ft_io",
            f"optim.micro_batch_size={case.micro_batch_size}",
            f"data.max_input_length={case.source_length}",
            f"data.max_target_length={case.target_length}",
            f"run.num_workers={WORLD_SIZE}",
        ]
    )
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    corpus = ["the sun is a star and fish have no legs , yes or no ?"] * 50
    tokenizer = build_tokenizer(cfg.model, lambda: corpus, strategy.broadcast_object)
    method = method_class(cfg)(cfg, tokenizer)
    model_config = build_model_config(cfg.model, tokenizer)
    strategy.barrier()
    baseline_kib = proc_status_kib("VmRSS")
    strategy.configure(model_config.d_model)
    with strategy.partitioned_init(strategy.resolved_config):
        model = build_model(cfg.model, model_config)
    parameters = count_parameters(model)
    engine = strategy.prepare(model)
    trained = as_torch_module(engine)
    after_init_kib = proc_status_kib("VmRSS")
    generator = torch.Generator().manual_seed(strategy.rank)
    vocab = len(tokenizer)
    started = time.perf_counter()
    for _ in range(case.steps):
        batch = {
            "input_ids": torch.randint(3, vocab, (case.micro_batch_size, case.source_length), generator=generator),
            "attention_mask": torch.ones(case.micro_batch_size, case.source_length, dtype=torch.long),
            "labels": torch.randint(3, vocab, (case.micro_batch_size, case.target_length), generator=generator),
        }
        strategy.backward_step(engine, method.loss(trained, batch)["loss"])
    step_s = (time.perf_counter() - started) / case.steps
    steady_kib = proc_status_kib("VmRSS")  # before the high-water mark, which then includes it
    result = {
        "rank": strategy.rank,
        "parameters": parameters,
        "baseline_mib": baseline_kib / 1024,
        "after_init_mib": after_init_kib / 1024,
        "peak_mib": proc_status_kib("VmHWM") / 1024,
        "steady_mib": steady_kib / 1024,
        "step_s": step_s,
    }
    result_file.write_text(json.dumps(result))
    strategy.barrier()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_case(case: Case, workdir: Path, timeout_s: float) -> list[dict[str, Any]]:
    """Both ranks of a case as separate processes; their result files."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = []
    for rank in range(WORLD_SIZE):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "HF_HUB_OFFLINE": "1",
        }
        log = (workdir / f"rank{rank}.log").open("w")
        command = [sys.executable, "-m", "ray_jobs.benchmarks.memory_benchmark", "--worker", json.dumps(asdict(case))]
        command += ["--result", str(workdir / f"rank{rank}.json")]
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for proc, _ in procs:
            if proc.wait(timeout=timeout_s) != 0:
                raise RuntimeError(f"{case.label}: a rank failed; see {workdir}/rank*.log")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    return [json.loads((workdir / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def planned(case: Case) -> dict[str, float]:
    """The planner's per-rank figures for the same setup on two CPU workers."""
    from trainer.planning.architecture import resolve_architecture
    from trainer.planning.memory import Workload, ZeroSetup
    from trainer.planning.planner import Hardware, PlanRequest, estimate

    arch = resolve_architecture(case.model, 500)
    request = PlanRequest(
        arch,
        Hardware(1, WORLD_SIZE, 0, 64, on_gpu=False),
        "fp32",
        Workload(case.micro_batch_size, case.source_length, case.target_length),
    )
    est = estimate(request, ZeroSetup(case.zero_stage, gradient_checkpointing=case.gradient_checkpointing))
    return {
        "model_states_mib": est.model_states.gpu_bytes / MIB,
        "activations_mib": est.activations.total_bytes / MIB,
        "planned_mib": (est.model_states.gpu_bytes + est.activations.total_bytes) / MIB,
    }


def summarize(case: Case, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    plan = planned(case)
    peak_added = max(r["peak_mib"] - r["baseline_mib"] for r in ranks)
    steady_added = max(r["steady_mib"] - r["baseline_mib"] for r in ranks)
    return {
        "case": asdict(case),
        "label": case.label,
        "parameters": ranks[0]["parameters"],
        **plan,
        "baseline_mib": max(r["baseline_mib"] for r in ranks),
        "measured_peak_added_mib": peak_added,
        "measured_steady_added_mib": steady_added,
        "peak_over_plan": peak_added / plan["planned_mib"],
        "steady_over_plan": steady_added / plan["planned_mib"],
        "step_s": max(r["step_s"] for r in ranks),
    }


def format_results(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Peak RSS of DeepSpeed training steps on CPU vs the planner",
        "",
        f"`{command}`; 2 ranks (gloo), fp32, randomly initialised presets, random tokens.",
        "",
        "| case | params | batch x in/out | plan: states + activations (MiB) | measured peak added (MiB) "
        "| peak / plan | steady added (MiB) | steady / plan | baseline RSS (MiB) | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        case = row["case"]
        lines.append(
            f"| {row['label']} | {row['parameters'] / 1e6:.1f}M | {case['micro_batch_size']} x "
            f"{case['source_length']}/{case['target_length']} | {row['model_states_mib']:.0f} + "
            f"{row['activations_mib']:.0f} = {row['planned_mib']:.0f} | {row['measured_peak_added_mib']:.0f} | "
            f"{row['peak_over_plan']:.2f} | {row['measured_steady_added_mib']:.0f} | {row['steady_over_plan']:.2f} | "
            f"{row['baseline_mib']:.0f} | {row['step_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_results/memory")
    parser.add_argument("--models", default="t5-small,t5-base")
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--input-length", type=int, default=128)
    parser.add_argument("--target-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help="also each case with gradient checkpointing")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per case, seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_rank(Case(**json.loads(args.worker)), Path(args.result))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [
        Case(model, int(stage), args.micro_batch, args.input_length, args.target_length, args.steps, ckpt)
        for model in args.models.split(",")
        for stage in args.stages.split(",")
        for ckpt in ((False, True) if args.checkpointing else (False,))
    ]
    rows = []
    for case in cases:
        started = time.monotonic()
        ranks = run_case(case, out / "work" / case.label.replace(" ", "_").replace("+", ""), args.timeout)
        rows.append(summarize(case, ranks))
        row = rows[-1]
        print(
            f"[memory] {case.label}: plan {row['planned_mib']:.0f} MiB, peak added {row['measured_peak_added_mib']:.0f}"
            f" MiB ({row['peak_over_plan']:.2f}x), steady {row['measured_steady_added_mib']:.0f} MiB "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    command = "python -m ray_jobs.benchmarks.memory_benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text(format_results(rows, command.strip()))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
