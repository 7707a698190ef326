"""The GPU benchmark: bf16 ZeRO training steps of T5 up to 3B through our strategy, beside a plain PyTorch loop,
a KNIFE student with its ZeRO-3 teacher, and one end-to-end run through `ray_jobs.submit`.

    python -m ray_jobs.benchmarks.gpu --out bench_results/gpu                 # a GPU machine (make bench-gpu)
    python -m ray_jobs.benchmarks.gpu --out /tmp/gpu --quick                  # t5-tiny smoke run, CPU if no GPU
    python -m ray_jobs.benchmarks.gpu --out bench_results/gpu --budget-s 540  # stop starting cases after 9 min

Step times come from ray_jobs.benchmarks.gpu_step workers (one process per case on a GPU, so peak memory and
out-of-memory failures belong to one case). Results accumulate in <out>/results.json: a second invocation on the
same device keeps every finished case and runs only the missing ones (and those that failed with an error), so
a benchmark larger than one time slot completes over several invocations. `--fresh` starts over. The report,
<out>/results.md, is rewritten after every case.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray_jobs.benchmarks.gpu_cases import STEP_SUITES, SUITES, BenchSettings, StepCase, plan_cases, unique_cases
from ray_jobs.benchmarks.gpu_report import (
    add_memory_plan,
    add_utilisation,
    comparisons,
    render_markdown,
    resolve_peak,
)
from ray_jobs.benchmarks.trainer_runs import DISTRIBUTED_ENV

CASE_TIMEOUT_S = 1200.0  # a 3B case with a first-use JIT build of DeepSpeed's CPU Adam stays well under this


def _cuda_available() -> bool:
    """Asked in a child process, so this one never holds a CUDA context while the workers measure memory."""
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip() == "True"


class GpuBenchmark:
    """Plans, runs and reports; results.json in `out` is the single record, updated after every case."""

    def __init__(self, out: Path, settings: BenchSettings, suites: tuple[str, ...], args: argparse.Namespace) -> None:
        self.out = out
        self.settings = settings
        self.suites = suites
        self.args = args
        self.plan = plan_cases(settings, suites)
        self.started = time.monotonic()
        self.longest_case_s = 60.0
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV},  # each case picks its own
            # DeepSpeed picks its accelerator at import; name it, so a DS_ACCELERATOR=cpu left in the shell
            # (the Makefile exports one for CPU runs) cannot silently put a GPU run on the CPU.
            "DS_ACCELERATOR": "cuda" if settings.use_gpu else "cpu",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "TOKENIZERS_PARALLELISM": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",
            # Random weights by design: never wait on a model hub (the lent machines cannot reach one).
            "HF_HUB_OFFLINE": "1",
        }
        os.environ.update(self.env)  # the Ray head of the end-to-end run inherits it
        self.summary = self._load_previous()

    # ---- the record ----------------------------------------------------------------------------
    def _load_previous(self) -> dict[str, Any]:
        path = self.out / "results.json"
        if self.args.report_only:
            return json.loads(path.read_text())
        device = self._probe()
        fresh = {"benchmark": "gpu", "device": device, "suites": {}, "cases": {}, "e2e": []}
        if self.args.fresh or not path.is_file():
            return fresh
        previous = json.loads(path.read_text())
        if previous.get("device", {}).get("device_name") != device.get("device_name"):
            print(f"[gpu] {path} holds results of another device; starting over", flush=True)
            return fresh
        kept = {k: r for k, r in previous["cases"].items() if r["status"] in ("ok", "oom")}
        print(f"[gpu] keeping {len(kept)} finished case(s) from {path}", flush=True)
        return {**fresh, "suites": previous.get("suites", {}), "cases": kept, "e2e": previous.get("e2e", [])}

    def _probe(self) -> dict[str, Any]:
        probe = self.out / "work" / "device.json"
        probe.parent.mkdir(parents=True, exist_ok=True)
        s = self.settings
        models = sorted({*s.models, *s.knife_models, *s.checkpointing_models, s.detail_model, s.e2e_model})
        command = [sys.executable, "-m", "ray_jobs.benchmarks.gpu_step", "--probe", str(probe), "--models", *models]
        subprocess.run([*command, *([] if s.use_gpu else ["--cpu"])], check=True, env=self.env)
        device = json.loads(probe.read_text())
        unknown = {name: check["error"] for name, check in device["models"].items() if "error" in check}
        if unknown:
            raise SystemExit(
                "these models cannot be built here (no weights are downloaded: presets or local paths only): "
                + "; ".join(f"{name}: {error}" for name, error in unknown.items())
            )
        return device

    def write(self) -> None:
        summary = self.summary
        summary["updated"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        summary["command"] = shlex.join(["python", "-m", "ray_jobs.benchmarks.gpu", *self.args.argv])
        summary["peak"] = resolve_peak(summary["device"], self.args.peak_tflops)
        summary["settings"] = asdict(self.settings)
        for suite, cases in self.plan.items():  # suites of earlier invocations stay in the report
            keys = summary["suites"].setdefault(suite, [])
            keys += [c.key for c in cases if c.key not in keys]
        summary["suites"] = {suite: summary["suites"][suite] for suite in STEP_SUITES if suite in summary["suites"]}
        for result in summary["cases"].values():
            add_utilisation(result, summary["peak"])
            add_memory_plan(result)
        summary["comparisons"] = comparisons(summary)
        (self.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
        (self.out / "results.md").write_text(render_markdown(summary))
        if self.args.copy_to:  # e.g. the device tool's $OUT, which a command killed at its limit still returns
            self.args.copy_to.mkdir(parents=True, exist_ok=True)
            for name in ("results.json", "results.md"):
                shutil.copy2(self.out / name, self.args.copy_to / name)

    # ---- step cases ----------------------------------------------------------------------------
    def run_steps(self) -> None:
        cases = [c for c in unique_cases(self.plan) if c.key not in self.summary["cases"]]
        for case in [c for c in cases if c.skip_reason()]:
            self._record({"key": case.key, "case": case.to_json(), "status": "skipped", "reason": case.skip_reason()})
        cases = [c for c in cases if not c.skip_reason()]
        if not cases:
            return
        if self.args.isolate:
            for case in cases:
                if self._sweep_already_failed(case):
                    reason = "a smaller micro batch of this configuration ran out of memory"
                    self._record({"key": case.key, "case": case.to_json(), "status": "skipped", "reason": reason})
                elif self._time_left() < self.longest_case_s:
                    print(f"[gpu] time budget reached; {case.key} and later cases are left for the next run")
                    return
                else:
                    self._run_workers([case])
        else:
            self._run_workers(cases)

    def _sweep_already_failed(self, case: StepCase) -> bool:
        smaller = [replace(case, micro_batch_size=mb) for mb in range(1, case.micro_batch_size)]
        return any(self.summary["cases"].get(c.key, {}).get("status") == "oom" for c in smaller)

    def _time_left(self) -> float:
        if self.args.budget_s is None:
            return float("inf")
        return self.args.budget_s - (time.monotonic() - self.started)

    def _run_workers(self, cases: list[StepCase]) -> None:
        work = self.out / "work"
        cases_file, results_file = work / "cases.json", work / "results.jsonl"
        cases_file.write_text(json.dumps([c.to_json() for c in cases]))
        results_file.unlink(missing_ok=True)
        log = self.out / "logs" / (f"{len(self.summary['cases']):03d}-{cases[0].model}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "ray_jobs.benchmarks.gpu_step",
            "--cases", str(cases_file), "--results", str(results_file), "--work-dir", str(work),
        ]  # fmt: skip
        timeout = min(CASE_TIMEOUT_S * len(cases), max(self._time_left(), 60.0))
        print(f"[gpu] {len(cases)} case(s) from {cases[0].key}; log {log}", flush=True)
        started = time.monotonic()
        status = "error"
        with log.open("w") as handle:
            try:
                code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env, timeout=timeout)
                status = "error" if code.returncode else "ok"
            except subprocess.TimeoutExpired:
                status = "timeout"
        self.longest_case_s = max(self.longest_case_s, (time.monotonic() - started) / len(cases))
        done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.is_file() else []
        for result in done:
            self._record(result)
        finished = {r["key"] for r in done}
        tail = "\n".join(log.read_text().splitlines()[-15:])
        for case in cases:
            if case.key not in finished:  # the worker died (killed by the OOM killer, a CUDA fault, the timeout)
                reason = f"worker {status} after {time.monotonic() - started:.0f}s; see {log}"
                self._record({"key": case.key, "case": case.to_json(), "status": status, "reason": reason, "log": tail})

    def _record(self, result: dict[str, Any]) -> None:
        self.summary["cases"][result["key"]] = result
        detail = f"{result['step_time_s']:.4f} s/step" if result.get("step_time_s") else result.get("reason") or ""
        print(f"[gpu] {result['key']}: {result['status']} {detail}", flush=True)
        self.write()

    # ---- end to end ----------------------------------------------------------------------------
    def run_e2e(self) -> None:
        """One training run as a user submits it: a local Ray head, Ray Train, NCCL on a GPU, our loop."""
        s = self.settings
        done = [r for r in self.summary["e2e"] if r["status"] == "SUCCEEDED" and r["model"] == s.e2e_model]
        if done:
            return
        if self._time_left() < 240:
            print("[gpu] time budget reached; the end-to-end run is left for the next run", flush=True)
            return
        from mlflow.tracking import MlflowClient

        from ray_jobs.submit import build_request, submit

        root = self.out / "e2e"
        shutil.rmtree(root, ignore_errors=True)  # a leftover checkpoint of the same run name would be resumed
        tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        overrides = [
            f"model.name={s.e2e_model}",
            "method.name=ft_io",
            "data.dataset=synthetic",
            f"data.max_train_examples={2000 if s.use_gpu else 128}",
            f"data.max_dev_examples={256 if s.use_gpu else 16}",
            f"ds.template={s.e2e_template}",
            f"ds.precision={s.precision}",
            f"optim.max_steps={s.e2e_steps}",
            f"optim.micro_batch_size={32 if s.use_gpu else 8}",
            f"tracking.log_every={max(1, s.e2e_steps // 10)}",
            f"tracking.tracking_uri={tracking_uri}",
            "tracking.experiment=gpu-benchmark",
            "tracking.log_model=false",
            f"run.use_gpu={str(s.use_gpu).lower()}",
            "run.num_workers=1",
            f"run.name=e2e-{s.e2e_model}",
            f"run.output_dir={root / 'runs'}",
        ]
        command = shlex.join(["python", "-m", "ray_jobs.submit", *overrides])
        print(f"[gpu] end to end: {command}", flush=True)
        started = time.monotonic()
        outcome = submit(build_request(overrides), address=None, timeout_s=max(self._time_left() - 60, 180))
        status, result = outcome.status, outcome.result
        record: dict[str, Any] = {
            "model": s.e2e_model,
            "template": s.e2e_template,
            "precision": s.precision,
            "use_gpu": s.use_gpu,
            "status": status.value,
            "job_wall_s": time.monotonic() - started,
            "command": command,
        }
        if result is not None:
            history = MlflowClient(tracking_uri).get_metric_history(result["mlflow_run_id"], "train/samples_per_s")
            windows = [m.value for m in sorted(history, key=lambda m: m.step)][1:]  # the first window warms up
            record.update(
                steps=result.get("train/steps"),
                train_wall_time_s=result.get("train/wall_time_s"),
                dev_accuracy=result.get("dev/accuracy"),
                samples_per_s=statistics.median(windows) if windows else None,
                mlflow_run_id=result.get("mlflow_run_id"),
            )
        self.summary["e2e"] = [r for r in self.summary["e2e"] if r["model"] != s.e2e_model] + [record]
        self.write()


def settings_from_args(args: argparse.Namespace, use_gpu: bool) -> BenchSettings:
    settings = BenchSettings.quick(use_gpu) if args.quick else BenchSettings.gpu()
    changes: dict[str, Any] = {"use_gpu": use_gpu}
    for name in ("models", "knife_models", "offload_models", "checkpointing_models", "micro_batches"):
        if getattr(args, name) is not None:
            changes[name] = tuple(getattr(args, name))
    for name in ("detail_model", "micro_batch_size", "src_len", "tgt_len", "precision", "e2e_model", "e2e_steps"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.steps is not None:
        changes["measure_steps"] = args.steps
    if args.warmup is not None:
        changes["warmup_steps"] = args.warmup
    return replace(settings, **changes)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu"))
    parser.add_argument("--quick", action="store_true", help="t5-tiny at smoke sizes (on CPU where no GPU is seen)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is visible")
    parser.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--models", nargs="+", help="ZeRO/plain suite models (default t5-base t5-large t5-3b)")
    parser.add_argument("--knife-models", nargs="+")
    parser.add_argument("--offload-models", nargs="+", help="models also run with ZeRO-3 + optimizer offload")
    parser.add_argument("--checkpointing-models", nargs="+")
    parser.add_argument("--detail-model", help="model of the optimizer comparison and the micro-batch sweep")
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--micro-batches", type=int, nargs="+", help="the sweep's micro batches")
    parser.add_argument("--src-len", type=int)
    parser.add_argument("--tgt-len", type=int)
    parser.add_argument("--precision", choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, help="timed steps per case")
    parser.add_argument("--warmup", type=int, help="untimed steps per case (at least 1)")
    parser.add_argument("--e2e-model")
    parser.add_argument("--e2e-steps", type=int)
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak per GPU for MFU, for devices not in the table")
    parser.add_argument("--budget-s", type=float, help="start no case that would not finish within this many s")
    parser.add_argument(
        "--isolate", action=argparse.BooleanOptionalAction, default=None,
        help="one worker process per case (default: on a GPU; on CPU one worker runs all cases)",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="discard <out>/results.json instead of completing it")
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    parser.add_argument("--copy-to", type=Path, help="also copy results.md/json here after every case")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.warmup is not None and args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step pays one-time builds)")
    use_gpu = not args.cpu and _cuda_available()
    if args.isolate is None:
        args.isolate = use_gpu
    if not use_gpu and not args.quick and not args.cpu:
        parser.error("no CUDA device visible: pass --quick (t5-tiny smoke run on CPU) or run on a GPU machine")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bench = GpuBenchmark(out, settings_from_args(args, use_gpu), tuple(args.suites), args)
    if not args.report_only:
        bench.write()
        if "e2e" in args.suites:  # first: the user path is the check a time budget must not crowd out
            bench.run_e2e()
        bench.run_steps()
    bench.write()
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}", flush=True)


if __name__ == "__main__":
    main()
