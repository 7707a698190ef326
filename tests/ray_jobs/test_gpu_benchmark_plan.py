"""The GPU benchmark's plan and report arithmetic, from hand-made results (the measured path is in
test_gpu_benchmark.py)."""

import pytest

from ray_jobs.benchmarks.gpu_cases import BenchSettings, StepCase, plan_cases, unique_cases
from ray_jobs.benchmarks.gpu_report import add_utilisation, comparisons, render_markdown, resolve_peak


def test_gpu_plan_covers_the_issue_matrix() -> None:
    plan = plan_cases(BenchSettings.gpu(), ("zero", "knife", "checkpointing", "optimizer", "micro_batch"))
    zero = [(c.model, c.engine, c.template, c.offload_optimizer) for c in plan["zero"]]
    assert zero == [
        ("t5-base", "deepspeed", "zero2", False), ("t5-base", "deepspeed", "zero3", False),
        ("t5-base", "plain", "zero2", False),
        ("t5-large", "deepspeed", "zero2", False), ("t5-large", "deepspeed", "zero3", False),
        ("t5-large", "plain", "zero2", False),
        ("t5-3b", "deepspeed", "zero2", False), ("t5-3b", "deepspeed", "zero3", False),
        ("t5-3b", "deepspeed", "zero3", True), ("t5-3b", "plain", "zero2", False),
    ]  # fmt: skip
    assert all(c.precision == "bf16" and c.use_gpu for c in unique_cases(plan))
    assert [c.key for c in unique_cases(plan) if c.optimizer != "fused"] == [plan["optimizer"][1].key]
    knife = plan["knife"]
    assert [(c.model, c.offload_optimizer) for c in knife] == [("t5-large", False), ("t5-3b", False), ("t5-3b", True)]
    assert all(c.method == "knife_student" and (c.src_len, c.rationale_len, c.tgt_len) == (128, 128, 32) for c in knife)
    assert [c.optimizer for c in plan["optimizer"]] == ["fused", "torch"]
    assert [c.micro_batch_size for c in plan["micro_batch"]] == [4, 8, 16, 32, 64]
    assert [c.gradient_checkpointing for c in plan["checkpointing"]] == [False, True, False, True]
    # Rows shared by suites run once: the ZeRO-2 mb 8 rows of t5-large (optimizer, sweep and checkpointing
    # baseline) and t5-3b (checkpointing baseline) come from the zero suite. 20 step cases in all.
    assert sum(len(cases) for cases in plan.values()) == 24 and len(unique_cases(plan)) == 20


def test_cpu_smoke_plan_skips_what_only_a_gpu_has() -> None:
    plan = plan_cases(BenchSettings.quick(use_gpu=False), ("zero", "optimizer"))
    skipped = {c.key: c.skip_reason() for c in unique_cases(plan) if c.skip_reason()}
    assert list(skipped.values()) == ["FusedAdam is a CUDA kernel; on CPU DeepSpeed runs torch's AdamW"]
    assert all(not c.offload_optimizer for c in unique_cases(plan))
    assert StepCase("m", engine="plain", method="knife_student").skip_reason().startswith("the plain PyTorch loop")


def _result(case: StepCase, step_time: float, flops: float, memory: float | None = None, status: str = "ok") -> dict:
    return {
        "key": case.key, "case": case.to_json(), "status": status, "step_time_s": step_time,
        "samples_per_s": case.micro_batch_size / step_time, "tokens_per_s": 100 / step_time,
        "model_flops_per_step": flops, "hardware_flops_per_step": flops * 4 / 3, "peak_memory_allocated_gib": memory,
    }  # fmt: skip


def test_report_arithmetic_and_targets() -> None:
    settings = BenchSettings.gpu()
    zero2 = settings.case("t5-3b")
    plain = settings.case("t5-3b", engine="plain")
    ckpt = settings.case("t5-3b", gradient_checkpointing=True)
    torch_adam = settings.case("t5-3b", optimizer="torch")
    cases = [
        _result(zero2, 0.50, 220e12, 60.0),
        _result(plain, 0.49, 220e12),
        _result(ckpt, 0.65, 220e12, 30.0),
        _result(torch_adam, 0.55, 220e12),
    ]
    sweep = [settings.case("t5-3b", micro_batch_size=mb) for mb in (4, 16)]
    cases += [_result(sweep[0], 0.3, 110e12), _result(sweep[1], 1.2, 440e12, status="oom")]
    summary = {
        "cases": {r["key"]: r for r in cases},
        "suites": {"zero": [zero2.key, plain.key], "micro_batch": [sweep[0].key, zero2.key, sweep[1].key]},
        "device": {"device_name": "NVIDIA H100 80GB HBM3", "num_gpus": 1},
        "e2e": [],
        "updated": "now",
        "command": "python -m ray_jobs.benchmarks.gpu",
    }
    summary["peak"] = resolve_peak(summary["device"], None)
    assert summary["peak"]["bf16_dense_tflops"] == 989.5
    for result in cases:
        add_utilisation(result, summary["peak"])
    assert cases[0]["mfu"] == pytest.approx(220e12 / 0.5 / 989.5e12)  # 44.5%
    assert cases[0]["hfu"] == pytest.approx(cases[0]["mfu"] * 4 / 3)
    assert cases[-1]["mfu"] is None  # out of memory: no utilisation
    comp = comparisons(summary)
    summary["comparisons"] = comp
    # Only like with like: the plain loop's twin of a DeepSpeed FusedAdam step uses torch's fused AdamW.
    assert comp["strategy_over_plain"] == [
        {"key": zero2.key, "plain_key": plain.key, "ratio": pytest.approx(0.50 / 0.49), "met": True}
    ]
    assert comp["checkpointing_on_over_off"] == [
        {"key": ckpt.key, "time_ratio": pytest.approx(1.3), "memory_ratio": pytest.approx(0.5)}
    ]
    assert comp["optimizer_torch_over_fused"] == [{"key": torch_adam.key, "torch_over_fused": pytest.approx(1.1)}]
    assert comp["best_micro_batch"]["micro_batch_size"] == 8  # 16 samples/s beats mb 4's 13.3; mb 16 ran out
    targets = comp["targets"]
    assert targets["t5_3b_mfu"]["met"] is True and targets["t5_3b_mfu"]["key"] == zero2.key
    assert targets["strategy_within_plain"]["met"] is True
    markdown = render_markdown(summary)
    assert "| t5-3b | ft_io | ZeRO-2 | fused | off | 8 | 512→128 | 0.5000 |" in markdown
    assert "44.5%" in markdown and "t5-3b bf16 MFU ≥ 40%: met" in markdown
    assert "oom: " in markdown and "## End to end through ray_jobs.submit\n\nNot run yet." in markdown


def test_unknown_devices_get_no_mfu_unless_a_peak_is_given() -> None:
    peak = resolve_peak({"device_name": "cpu (x86_64)"}, None)
    assert peak["bf16_dense_tflops"] is None and "no bf16 peak known" in peak["source"]
    result = _result(BenchSettings.quick(False).case("t5-tiny"), 0.5, 1e12)
    add_utilisation(result, peak)
    assert result["mfu"] is None
    add_utilisation(result, resolve_peak({"device_name": "cpu"}, 4.0))
    assert result["mfu"] == pytest.approx(0.5)
