"""A step-time worker of the GPU benchmark: times optimizer steps of the cases it is given, one JSON line each.

    python -m ray_jobs.benchmarks.gpu_step --cases CASES.json --results RESULTS.jsonl --work-dir DIR
    python -m ray_jobs.benchmarks.gpu_step --probe PROBE.json

A DeepSpeed case is built exactly as a training run builds it: the config is an ExperimentConfig, the tokenizer,
model config and model come from the factory and `trainer.loop.build_trained_model`, a KNIFE student loads its
teacher through `KnifeStudent.setup` (a ZeRO-3 inference engine), and every step is `method.loss` then
`DeepSpeedStrategy.backward_step`. A plain case is the PyTorch loop a user would write instead: fp32 weights,
`torch.autocast` bf16, torch's AdamW, gradient clipping. Batches are random token ids of fixed lengths, so every
step does the same work and its FLOPs are known (trainer.perf.flops).

The orchestrator (ray_jobs.benchmarks.gpu) starts one worker per case on a GPU, so each peak-memory reading and
each out-of-memory failure belongs to one case; on CPU one worker runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ray_jobs.benchmarks.gpu_cases import StepCase
from trainer.config.loader import load_config
from trainer.config.schema import DataConfig, ExperimentConfig
from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import load_splits
from trainer.evaluation.protocols import Batch
from trainer.loop import build_trained_model
from trainer.methods.base import Method
from trainer.methods.knife.collate import build_knife_features
from trainer.methods.registry import method_class
from trainer.models.architecture import T5Architecture
from trainer.models.factory import build_model, build_model_config, build_tokenizer, count_parameters
from trainer.perf.flops import StepFlops, knife_student_step_flops, train_step_flops
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy
from trainer.strategy.ds_config import load_template
from trainer.strategy.protocols import as_torch_module

GIB = 2**30


def _corpus() -> list[str]:
    """Text for the offline tokenizers of the presets: the synthetic task's, as a benchmark run would see."""
    return tokenizer_corpus(load_splits(DataConfig(dataset="synthetic"), seed=0).train)


def case_config(case: StepCase, work_dir: Path, teacher_dir: Path | None = None) -> ExperimentConfig:
    """The ExperimentConfig a training run of this case would use."""
    template: str = case.template
    if case.optimizer == "torch":
        # torch's AdamW instead of FusedAdam: the same template with DeepSpeed's `torch_adam` switch.
        config, _ = load_template(case.template)
        config["optimizer"]["params"]["torch_adam"] = True
        path = work_dir / "templates" / f"{case.template}-torch-adam.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        template = str(path)
    overrides = case.config_overrides(template)
    if teacher_dir is not None:
        overrides.append(f"method.knife.teacher={teacher_dir}")
    return load_config(overrides=overrides)


def ensure_teacher(case: StepCase, work_dir: Path) -> Path:
    """A randomly initialised teacher of the case's model saved as an HF directory (as a teacher run exports
    it), built once per model and precision and reused."""
    directory = work_dir / "teachers" / f"{case.model}-{case.precision}"
    if (directory / "config.json").is_file():
        return directory
    cfg = case_config(case, work_dir)
    tokenizer = build_tokenizer(cfg.model, _corpus, broadcast=lambda blob: blob)
    config = build_model_config(cfg.model, tokenizer)
    device = torch.device("cuda" if case.use_gpu else "cpu")
    with device:  # initialise on the GPU: a 3B model's random init on CPU takes minutes
        teacher = build_model(cfg.model, config)
    dtype = torch.bfloat16 if case.precision == "bf16" else torch.float32
    staging = directory.with_name(directory.name + ".partial")
    # transformers' wrapper around PreTrainedModel.to types it unbound (self expected first)
    teacher.to(dtype).save_pretrained(staging)  # type: ignore[arg-type]
    tokenizer.save_pretrained(staging)
    staging.rename(directory)
    del teacher
    return directory


def make_batch(method: Method, case: StepCase, vocab_size: int, first_id: int) -> Batch:
    """Random token ids of exactly the case's lengths, through the method's own collate."""
    generator = torch.Generator().manual_seed(0)

    def ids(length: int) -> list[int]:
        return torch.randint(first_id, vocab_size, (length,), generator=generator).tolist()

    if case.method == "knife_student":
        width = case.src_len + case.rationale_len
        features = [
            build_knife_features(ids(case.src_len), ids(case.rationale_len), ids(case.tgt_len), width)
            for _ in range(case.micro_batch_size)
        ]
    else:
        features = [
            {"input_ids": ids(case.src_len), "attention_mask": [1] * case.src_len, "labels": ids(case.tgt_len)}
            for _ in range(case.micro_batch_size)
        ]
    return method.collate(features)


def step_flops(case: StepCase, shape: T5Architecture) -> StepFlops:
    if case.method == "knife_student":
        return knife_student_step_flops(
            shape, shape, case.micro_batch_size, case.src_len, case.rationale_len, case.tgt_len,
            case.gradient_checkpointing,
        )  # fmt: skip
    return train_step_flops(shape, case.micro_batch_size, case.src_len, case.tgt_len, case.gradient_checkpointing)


def _synchronize(case: StepCase) -> None:
    if case.use_gpu:
        torch.cuda.synchronize()


def time_steps(step: Callable[[], torch.Tensor], case: StepCase) -> dict[str, Any]:
    """Warm-up steps (the first one pays JIT builds and allocator growth), then individually timed steps."""
    _synchronize(case)
    start = time.perf_counter()
    first_loss = step()
    _synchronize(case)
    first_step_s = time.perf_counter() - start
    for _ in range(case.warmup_steps - 1):
        step()
    times: list[float] = []
    last_loss = first_loss
    for _ in range(case.measure_steps):
        _synchronize(case)
        start = time.perf_counter()
        last_loss = step()
        _synchronize(case)
        times.append(time.perf_counter() - start)
    return {
        "first_step_s": first_step_s,
        "step_times_s": times,
        "loss_first": float(first_loss.detach()),
        "loss_last": float(last_loss.detach()),
    }


def _strategy_steps(cfg: ExperimentConfig, case: StepCase) -> dict[str, Any]:
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    method_cls = method_class(cfg)
    tokenizer = build_tokenizer(cfg.model, _corpus, strategy.broadcast_object, source=method_cls.tokenizer_source(cfg))
    method = method_cls(cfg, tokenizer)
    model_config = build_model_config(cfg.model, tokenizer)
    strategy.configure(model_config.d_model)
    method.setup(strategy, model_config)  # KNIFE: the frozen teacher, partitioned as a ZeRO-3 inference engine
    model = build_trained_model(method, model_config, strategy)
    num_parameters = count_parameters(model)
    engine = strategy.prepare(model)
    engine.train()
    batch = make_batch(method, case, model_config.vocab_size, _first_id(tokenizer))
    batch = {k: v.to(strategy.device) for k, v in batch.items()}
    trained = as_torch_module(engine)

    def step() -> torch.Tensor:
        loss = method.loss(trained, batch)["loss"]
        strategy.backward_step(engine, loss)
        return loss

    zero = strategy.training_config["zero_optimization"]
    return {
        "model_config": model_config,
        "num_parameters": num_parameters,
        "optimizer_impl": strategy.optimizer_name(engine),
        "zero_stage": zero.get("stage"),
        "offload": "offload_optimizer" in zero,
        "step": step,
    }


def _plain_steps(cfg: ExperimentConfig, case: StepCase) -> dict[str, Any]:
    """The loop a user writes without DeepSpeed: same model and batch, fp32 weights under bf16 autocast."""
    torch.manual_seed(cfg.run.seed)
    device = torch.device("cuda" if case.use_gpu else "cpu")
    unconfigured = DeepSpeedStrategy(cfg)  # builds the model as a run does, but without any DeepSpeed config
    tokenizer = build_tokenizer(cfg.model, _corpus, broadcast=lambda blob: blob)
    method = method_class(cfg)(cfg, tokenizer)
    model_config = build_model_config(cfg.model, tokenizer)
    model = build_trained_model(method, model_config, unconfigured).to(device).train()
    optim = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay,
        fused=case.optimizer == "fused",
    )  # fmt: skip
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if case.precision == "bf16" else contextlib.nullcontext()
    )
    batch = make_batch(method, case, model_config.vocab_size, _first_id(tokenizer))
    batch = {k: v.to(device) for k, v in batch.items()}

    def step() -> torch.Tensor:
        with autocast:
            loss = method.loss(model, batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.gradient_clipping)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return {
        "model_config": model_config,
        "num_parameters": count_parameters(model),
        "optimizer_impl": f"torch.optim.AdamW(fused={case.optimizer == 'fused'})",
        "zero_stage": None,
        "offload": False,
        "step": step,
    }


def _first_id(tokenizer: Any) -> int:
    """The first id after the special tokens, so random batches hold no padding or end-of-sequence ids."""
    return max(tokenizer.all_special_ids) + 1


def run_case(case: StepCase, work_dir: Path) -> dict[str, Any]:
    """Build, warm up, time; never raises: failures (out of memory first of all) become the result's status."""
    result: dict[str, Any] = {"key": case.key, "case": case.to_json(), "status": "ok", "reason": None}
    built: dict[str, Any] = {}
    try:
        teacher_dir = ensure_teacher(case, work_dir) if case.method == "knife_student" else None
        gc.collect()
        if case.use_gpu:  # the teacher's one-off creation is no part of the case's memory
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        cfg = case_config(case, work_dir, teacher_dir)
        built = _plain_steps(cfg, case) if case.engine == "plain" else _strategy_steps(cfg, case)
        result["setup_s"] = time.perf_counter() - started
        result.update(time_steps(built.pop("step"), case))
    except torch.OutOfMemoryError as exc:
        result.update(status="oom", reason=str(exc).splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others' results
        result.update(status="error", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    model_config = built.pop("model_config", None)
    result.update(built)
    if model_config is not None:
        shape = T5Architecture.from_hf_config(model_config)
        flops = step_flops(case, shape)
        result.update(
            shape=asdict(shape),
            parameter_count_formula=shape.num_parameters,
            model_flops_per_step=flops.model,
            hardware_flops_per_step=flops.hardware,
        )
    if result.get("step_times_s"):
        step_time = statistics.median(result["step_times_s"])
        trained_tokens = case.src_len + case.tgt_len  # the trained model's tokens; a KNIFE teacher's are extra
        result.update(
            step_time_s=step_time,
            samples_per_s=case.micro_batch_size / step_time,
            tokens_per_s=case.micro_batch_size * trained_tokens / step_time,
            achieved_tflops=result["model_flops_per_step"] / step_time / 1e12,
        )
    result.update(_memory(case))
    return result


def _memory(case: StepCase) -> dict[str, float | None]:
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB
    if not case.use_gpu:
        return {"peak_memory_allocated_gib": None, "peak_memory_reserved_gib": None, "peak_rss_gib": rss_gib}
    return {
        "peak_memory_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "peak_memory_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "peak_rss_gib": rss_gib,
    }


def probe_device(use_gpu: bool) -> dict[str, Any]:
    """Versions and the device, plus the bf16 matmul rate it reaches (the practical ceiling beside the datasheet)."""
    import deepspeed
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
    }
    if not use_gpu:
        return {**info, "device_name": f"cpu ({platform.machine()})", "num_gpus": 0, "matmul_bf16_tflops": None}
    props = torch.cuda.get_device_properties(0)
    info.update(
        device_name=torch.cuda.get_device_name(0),
        num_gpus=torch.cuda.device_count(),
        capability=f"{props.major}.{props.minor}",
        memory_gib=props.total_memory / GIB,
        nccl=".".join(map(str, _as_tuple(torch.cuda.nccl.version()))),
        cudnn=torch.backends.cudnn.version(),
        bf16_supported=torch.cuda.is_bf16_supported(),
        matmul_bf16_tflops=_matmul_tflops(),
    )
    return info


def _as_tuple(version: Any) -> tuple:
    return version if isinstance(version, tuple) else (version,)


def check_models(models: list[str]) -> dict[str, dict[str, Any]]:
    """Each model name resolved the way a case resolves it (offline), so a name that cannot be built fails the
    benchmark before any device time is spent on it; for the ones that resolve, their size."""
    checked: dict[str, dict[str, Any]] = {}
    for name in models:
        try:
            cfg = load_config(overrides=[f"model.name={name}"])
            tokenizer = build_tokenizer(cfg.model, _corpus, broadcast=lambda blob: blob)
            shape = T5Architecture.from_hf_config(build_model_config(cfg.model, tokenizer))
            checked[name] = {"parameters": shape.num_parameters, "shape": asdict(shape)}
        except Exception as exc:  # noqa: BLE001 - any failure to resolve is reported by name
            checked[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return checked


def _matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """Median rate of n×n×n bf16 products on random data (never zeros, which run faster), after warm-up."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, help="JSON list of StepCase fields")
    parser.add_argument("--results", type=Path, help="JSONL file to append one result per case to")
    parser.add_argument("--work-dir", type=Path, help="templates and KNIFE teachers are written here")
    parser.add_argument("--probe", type=Path, help="write the device description here and exit")
    parser.add_argument("--cpu", action="store_true", help="probe the CPU even if a GPU is visible")
    parser.add_argument("--models", nargs="*", default=[], help="with --probe: check these names resolve")
    args = parser.parse_args(argv)
    if args.probe:
        device = probe_device(use_gpu=not args.cpu and torch.cuda.is_available())
        args.probe.write_text(json.dumps({**device, "models": check_models(args.models)}, indent=2))
        return
    cases = [StepCase(**fields) for fields in json.loads(args.cases.read_text())]
    for case in cases:
        result = run_case(case, args.work_dir)
        with args.results.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        print(f"[gpu_step] {case.key}: {result['status']} {result.get('step_time_s', '')}", flush=True)
        gc.collect()
        if case.use_gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
