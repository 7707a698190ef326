"""The GPU benchmark's code path at CPU size: real step workers (strategy, method, KNIFE teacher), a real Ray head
for the end-to-end run, real report files. Without a GPU it runs t5-tiny on CPU (gloo, bf16); the numbers mean
nothing, the structure and the FLOP/MFU arithmetic are what is checked."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.benchmarks.gpu_cases import STEP_SUITES, BenchSettings, StepCase, plan_cases, unique_cases
from trainer.models.architecture import T5Architecture
from trainer.perf.flops import knife_student_step_flops, train_step_flops

REPO_ROOT = Path(__file__).resolve().parents[2]
PEAK_TFLOPS = 0.5  # a made-up per-device peak, so MFU is computed on CPU too


def _benchmark(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ray_jobs.benchmarks.gpu", "--out", str(out), "--quick", "--cpu", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_quick_benchmark_measures_every_suite_and_reports_flops_and_mfu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    run = _benchmark(out, "--peak-tflops", str(PEAK_TFLOPS))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    planned = plan_cases(BenchSettings.quick(use_gpu=False), STEP_SUITES)
    assert summary["suites"] == {suite: [c.key for c in cases] for suite, cases in planned.items()}
    assert set(summary["cases"]) == {c.key for c in unique_cases(planned)}
    assert summary["device"]["num_gpus"] == 0 and summary["peak"]["bf16_dense_tflops"] == PEAK_TFLOPS

    for key, result in summary["cases"].items():
        case = StepCase(**result["case"])
        if case.skip_reason():
            assert result["status"] == "skipped" and result["reason"] == case.skip_reason()
            continue
        assert result["status"] == "ok", (key, result.get("reason"), result.get("traceback"))
        assert len(result["step_times_s"]) == case.measure_steps
        assert result["step_time_s"] == statistics.median(result["step_times_s"])
        assert result["samples_per_s"] == pytest.approx(case.micro_batch_size / result["step_time_s"])
        # FLOPs from the architecture of the model that actually ran, whose HF parameter count they reproduce.
        shape = T5Architecture(**result["shape"])
        assert result["num_parameters"] == result["parameter_count_formula"] == shape.num_parameters
        if case.method == "knife_student":
            flops = knife_student_step_flops(shape, shape, case.micro_batch_size, case.src_len, case.rationale_len,
                                             case.tgt_len, case.gradient_checkpointing)  # fmt: skip
        else:
            flops = train_step_flops(shape, case.micro_batch_size, case.src_len, case.tgt_len,
                                     case.gradient_checkpointing)  # fmt: skip
        assert (result["model_flops_per_step"], result["hardware_flops_per_step"]) == (flops.model, flops.hardware)
        assert result["mfu"] == pytest.approx(flops.model / result["step_time_s"] / (PEAK_TFLOPS * 1e12))
        assert result["hfu"] == pytest.approx(flops.hardware / result["step_time_s"] / (PEAK_TFLOPS * 1e12))
        assert result["peak_memory_allocated_gib"] is None and result["peak_rss_gib"] > 0
        assert result["loss_first"] > 0 and result["loss_last"] > 0
        expected_optimizer = "torch.optim.AdamW(fused=False)" if case.engine == "plain" else "AdamW"
        assert result["optimizer_impl"] == expected_optimizer

    (e2e,) = summary["e2e"]
    assert e2e["status"] == "SUCCEEDED" and e2e["steps"] == BenchSettings.quick(False).e2e_steps
    assert e2e["samples_per_s"] > 0 and 0.0 <= e2e["dev_accuracy"] <= 1.0
    assert e2e["command"].startswith("python -m ray_jobs.submit model.name=t5-tiny")

    report = (out / "results.md").read_text()
    assert report.count("| t5-tiny | ") >= len(unique_cases(planned))
    for title in ("ZeRO-2, ZeRO-3", "KNIFE student", "Gradient checkpointing", "Fused vs torch", "Micro-batch sweep"):
        assert title in report
    assert "## End to end through ray_jobs.submit" in report and "| SUCCEEDED |" in report

    # A second invocation keeps what was measured; --report-only re-derives MFU against another peak.
    again = _benchmark(out, "--peak-tflops", str(2 * PEAK_TFLOPS), "--report-only")
    assert again.returncode == 0, again.stderr[-2000:]
    rederived = json.loads((out / "results.json").read_text())
    for key, result in summary["cases"].items():
        if result.get("mfu") is not None:
            assert rederived["cases"][key]["mfu"] == pytest.approx(result["mfu"] / 2)
            assert rederived["cases"][key]["step_times_s"] == result["step_times_s"]
