"""Training-step cost of the DeepSpeed strategy against a plain torch DDP loop, run by `ray_jobs.benchmarks.perf`
under `torchrun --nproc-per-node 2` (gloo):

    torchrun --nproc-per-node 2 -m ray_jobs.benchmarks.perf_steps time   --shape t5-mini --loops zero1,zero2 --out F
    torchrun --nproc-per-node 2 -m ray_jobs.benchmarks.perf_steps memory --shape t5-mini --loop zero2 --out F
    torchrun --nproc-per-node 2 -m ray_jobs.benchmarks.perf_steps hf     --shape t5-mini --out F

Every loop trains the same T5 (same initial weights) on the same per-rank batches with torch's AdamW, gradient
clipping at 1.0 and a warm-up/decay schedule. `time` keeps the DDP loop alive and alternates blocks of DDP steps
and steps of one other loop, so each ratio compares steps taken seconds apart (machine noise cancels). `memory`
builds one loop in fresh processes and reports each rank's peak RSS. `hf` times transformers' Seq2SeqTrainer with
the strategy's resolved ZeRO-2 config between two DDP blocks.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import T5Config, T5ForConditionalGeneration

from trainer.config.loader import load_config
from trainer.models.architecture import T5_VOCAB_SIZE
from trainer.models.presets import get_preset
from trainer.perf.process_memory import proc_status_kib
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy
from trainer.strategy.ds_config import load_template, size_buckets

BATCH, INPUT_LENGTH, TARGET_LENGTH, TINY_VOCAB = 16, 96, 8, 4000
LR, WARMUP_STEPS, MAX_STEPS, CLIP = 1e-3, 10, 10_000, 1.0
# The tiny presets with an offline tokenizer's vocabulary; t5-small (the published shape) with its real one.
SHAPES = {"t5-tiny": TINY_VOCAB, "t5-mini": TINY_VOCAB, "t5-small": T5_VOCAB_SIZE}
HIDDEN2_BUCKETS = {"reduce_bucket_size": "hidden2", "allgather_bucket_size": "hidden2"}
# name -> (ExperimentConfig overrides, explicit values patched into the template's zero_optimization)
STRATEGY_LOOPS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "zero1": (["ds.template=zero1"], {}),
    "zero2": (["ds.template=zero2"], {}),
    "zero3": (["ds.template=zero3"], {}),
    "zero3-offload-param": (["ds.template=zero3", "ds.offload_param=true"], {}),
    # The buckets the resolver produced before (transformers' "auto" rule, hidden_size²), for comparison.
    "zero1-hidden2-buckets": (["ds.template=zero1"], HIDDEN2_BUCKETS),
    "zero2-hidden2-buckets": (["ds.template=zero2"], HIDDEN2_BUCKETS),
    # ZeRO-3 with DeepSpeed's own prefetch bucket and persistence threshold instead of transformers' hidden-size rule.
    "zero3-deepspeed-defaults": (
        ["ds.template=zero3"],
        {"stage3_prefetch_bucket_size": 50_000_000, "stage3_param_persistence_threshold": 100_000},
    ),
}
LOOPS = ("ddp", *STRATEGY_LOOPS)


def model_config(shape: str) -> T5Config:
    architecture = replace(get_preset(shape).architecture, vocab_size=SHAPES[shape], dropout_rate=0.0)
    return T5Config(**architecture.config_kwargs(pad_token_id=0, eos_token_id=1))


def make_batches(config: T5Config, rank: int, count: int = 4) -> list[dict[str, torch.Tensor]]:
    """Per-rank random token batches of fixed length (so every step costs the same), identical for every loop."""
    generator = torch.Generator().manual_seed(1000 + rank)
    return [
        {
            "input_ids": torch.randint(3, config.vocab_size, (BATCH, INPUT_LENGTH), generator=generator),
            "attention_mask": torch.ones(BATCH, INPUT_LENGTH, dtype=torch.long),
            "labels": torch.randint(3, config.vocab_size, (BATCH, TARGET_LENGTH), generator=generator),
        }
        for _ in range(count)
    ]


def fresh_model(config: T5Config) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config)


def warmup_decay(step: int) -> float:
    """The LR multiplier of DeepSpeed's WarmupDecayLR (linear warm-up, then linear decay)."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return max(0.0, (MAX_STEPS - step) / (MAX_STEPS - WARMUP_STEPS))


class DDPLoop:
    """The reference: what a user writes with torch alone."""

    def __init__(self, config: T5Config) -> None:
        self.model = DistributedDataParallel(fresh_model(config))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_decay)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        del self.model, self.optimizer, self.scheduler


class StrategyLoop:
    """The project's DeepSpeedStrategy, exactly as trainer.loop drives it."""

    def __init__(self, name: str, config: T5Config, scratch: Path) -> None:
        overrides, patch = STRATEGY_LOOPS[name]
        if patch:
            overrides = [*overrides, f"ds.template={self._patched_template(overrides, patch, config, scratch)}"]
        cfg = load_config(
            overrides=[
                *overrides,
                f"optim.micro_batch_size={BATCH}",
                f"optim.lr={LR}",
                f"optim.warmup_steps={WARMUP_STEPS}",
                f"optim.max_steps={MAX_STEPS}",
                f"optim.gradient_clipping={CLIP}",
                f"run.num_workers={dist.get_world_size()}",
            ]
        )
        self.strategy = DeepSpeedStrategy(cfg)
        self.strategy.setup_distributed()
        self.strategy.configure(config.d_model)
        with self.strategy.partitioned_init(self.strategy.resolved_config):
            model = fresh_model(config)
        self.engine = self.strategy.prepare(model)

    @staticmethod
    def _patched_template(overrides: list[str], patch: dict[str, Any], config: T5Config, scratch: Path) -> Path:
        template_name = next(o.split("=", 1)[1] for o in overrides if o.startswith("ds.template="))
        template, _ = load_template(template_name)
        hidden2 = config.d_model * config.d_model
        template["zero_optimization"].update({k: hidden2 if v == "hidden2" else v for k, v in patch.items()})
        path = scratch / f"{template_name}-{abs(hash(json.dumps(patch, sort_keys=True)))}.json"
        path.write_text(json.dumps(template))
        return path

    @property
    def resolved_config(self) -> dict[str, Any]:
        return self.strategy.training_config

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.strategy.backward_step(self.engine, self.engine(**batch).loss)

    def close(self) -> None:
        self.engine.destroy()
        del self.engine


def build_loop(name: str, config: T5Config, scratch: Path) -> DDPLoop | StrategyLoop:
    return DDPLoop(config) if name == "ddp" else StrategyLoop(name, config, scratch)


def timed_steps(loop: DDPLoop | StrategyLoop, batches: list[dict[str, torch.Tensor]], count: int) -> list[float]:
    """Seconds per step; ranks start each step together, so rank 0's clock measures the synchronous step."""
    times = []
    for index in range(count):
        dist.barrier()
        start = time.perf_counter()
        loop.step(batches[index % len(batches)])
        times.append(time.perf_counter() - start)
    return times


@dataclass
class LoopTiming:
    loop: str
    step_s: list[float] = field(default_factory=list)
    ddp_step_s: list[float] = field(default_factory=list)  # the DDP steps interleaved with this loop's

    def summary(self, samples_per_step: int) -> dict[str, Any]:
        loop_ms, ddp_ms = statistics.median(self.step_s) * 1e3, statistics.median(self.ddp_step_s) * 1e3
        return {
            "loop": self.loop,
            "ms_per_step": loop_ms,
            "ms_per_step_p10_p90": _p10_p90(self.step_s),
            "samples_per_s": samples_per_step / (loop_ms / 1e3),
            "ddp_ms_per_step": ddp_ms,
            "vs_ddp": loop_ms / ddp_ms,
            "steps_timed": len(self.step_s),
        }


def _p10_p90(values: list[float]) -> list[float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1e3  # noqa: E731
    return [pick(0.1), pick(0.9)]


def time_loops(shape: str, loops: list[str], rounds: int, steps: int, warmup: int, scratch: Path) -> dict[str, Any]:
    config = model_config(shape)
    batches = make_batches(config, dist.get_rank())
    ddp = DDPLoop(config)
    timed_steps(ddp, batches, warmup)
    results = []
    for name in loops:
        loop = build_loop(name, config, scratch)
        timed_steps(loop, batches, warmup)
        timing = LoopTiming(name)
        for _ in range(rounds):
            timing.ddp_step_s += timed_steps(ddp, batches, steps)
            timing.step_s += timed_steps(loop, batches, steps)
        summary = timing.summary(BATCH * dist.get_world_size())
        if isinstance(loop, StrategyLoop):
            zero = loop.resolved_config["zero_optimization"]
            summary["zero_optimization"] = {k: v for k, v in zero.items() if "bucket" in k or "persistence" in k}
        results.append(summary)
        loop.close()
        del loop
        gc.collect()
    all_ddp = [r["ddp_ms_per_step"] for r in results]
    return {
        "shape": shape,
        "parameters": sum(p.numel() for p in fresh_model(config).parameters()),
        "ddp_ms_per_step": statistics.median(all_ddp) if all_ddp else None,
        "loops": results,
    }


def measure_memory(shape: str, loop_name: str, steps: int, scratch: Path) -> dict[str, Any]:
    config = model_config(shape)
    batches = make_batches(config, dist.get_rank())
    gc.collect()
    before = proc_status_kib("VmRSS") / 1024
    loop = build_loop(loop_name, config, scratch)
    times = timed_steps(loop, batches, steps)
    mine = {"rss_before_mb": before, "peak_rss_mb": proc_status_kib("VmHWM") / 1024, "last_step_s": times[-1]}
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    return {"shape": shape, "loop": loop_name, "ranks": ranks}


def time_hf_trainer(shape: str, rounds: int, steps: int, warmup: int, scratch: Path) -> dict[str, Any]:
    """transformers' Seq2SeqTrainer on the strategy's resolved ZeRO-2 config (use_cpu=True: without it every
    rank acts as the main process on CPU), timed per step by a callback, between two blocks of DDP steps."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    config = model_config(shape)
    batches = make_batches(config, dist.get_rank())
    ddp = DDPLoop(config)
    timed_steps(ddp, batches, warmup)
    ddp_before = [s for _ in range(rounds) for s in timed_steps(ddp, batches, steps)]

    total = warmup + rounds * steps
    strategy_loop_cfg = load_config(
        overrides=[
            "ds.template=zero2",
            f"optim.micro_batch_size={BATCH}",
            f"optim.lr={LR}",
            f"optim.warmup_steps={WARMUP_STEPS}",
            f"optim.max_steps={total}",
            f"optim.gradient_clipping={CLIP}",
            f"run.num_workers={dist.get_world_size()}",
        ]
    )
    strategy = DeepSpeedStrategy(strategy_loop_cfg)
    strategy.setup_distributed()
    strategy.configure(config.d_model)
    model = fresh_model(config)
    ds_config = size_buckets(strategy.training_config, sum(p.numel() for p in model.parameters()))

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.durations: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.starts.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.durations.append(time.perf_counter() - self.starts[-1])

    rows = [{k: v[i] for k, v in batch.items()} for batch in batches for i in range(BATCH)]
    clock = StepClock()
    args = Seq2SeqTrainingArguments(
        output_dir=str(scratch / "hf"),
        use_cpu=True,
        deepspeed=ds_config,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        max_steps=total,
        learning_rate=LR,
        warmup_steps=WARMUP_STEPS,
        max_grad_norm=CLIP,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        report_to="none",
        logging_steps=10**9,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=0,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=_RepeatingRows(rows, total * BATCH * dist.get_world_size()),
        data_collator=lambda items: {k: torch.stack([item[k] for item in items]) for k in items[0]},
        callbacks=[clock],
    )
    trainer.train()
    hf_steps = clock.durations[warmup:]
    ddp_after = [s for _ in range(rounds) for s in timed_steps(ddp, batches, steps)]
    ddp_all = ddp_before + ddp_after
    hf_ms, ddp_ms = statistics.median(hf_steps) * 1e3, statistics.median(ddp_all) * 1e3
    return {
        "shape": shape,
        "loop": "hf-seq2seq-trainer-zero2",
        "ms_per_step": hf_ms,
        "ms_per_step_p10_p90": _p10_p90(hf_steps),
        "samples_per_s": BATCH * dist.get_world_size() / (hf_ms / 1e3),
        "ddp_ms_per_step": ddp_ms,
        "vs_ddp": hf_ms / ddp_ms,
        "steps_timed": len(hf_steps),
        "zero_optimization": {k: v for k, v in ds_config["zero_optimization"].items() if "bucket" in k},
    }


class _RepeatingRows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]], length: int) -> None:
        self.rows, self.length = rows, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index % len(self.rows)]


def _chunks(text: str) -> Iterator[str]:
    yield from (part for part in text.split(",") if part)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["time", "memory", "hf"])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--loops", default=",".join(STRATEGY_LOOPS), help="time: loops compared with DDP")
    parser.add_argument("--loop", choices=LOOPS, help="memory: the one loop to build")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="steps per block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    runs: dict[str, Callable[[Path], dict[str, Any]]] = {
        "time": lambda s: time_loops(args.shape, list(_chunks(args.loops)), args.rounds, args.steps, args.warmup, s),
        "memory": lambda s: measure_memory(args.shape, args.loop, args.steps, s),
        "hf": lambda s: time_hf_trainer(args.shape, args.rounds, args.steps, args.warmup, s),
    }
    with tempfile.TemporaryDirectory() as scratch:
        result = runs[args.mode](Path(scratch))
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
