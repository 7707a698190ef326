"""One rank of test_bucket_resume (run by torchrun, gloo): for each ZeRO stage, train four steps straight through,
and separately train two, checkpoint, rebuild a differently initialised engine, resume and train two more.

Writes, per stage, the resolved bucket sizes, the losses and every rank's gradient norms of both runs, the first
step's norm from a plain replica, and the two consolidated exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.trainer.strategy.strategy_setup import configured_strategy
from trainer.config.loader import load_config
from trainer.models.factory import build_model, count_parameters

STEPS, RESUME_AT = 4, 2


def engine_for(overrides: list[str], init_seed: int):
    cfg = load_config(overrides=overrides)
    strategy, tokenizer, model_config = configured_strategy(cfg)
    torch.manual_seed(init_seed)
    with strategy.partitioned_init(strategy.resolved_config):
        model = build_model(cfg.model, model_config)
    parameters = count_parameters(model)
    return strategy, strategy.prepare(model), tokenizer, parameters


def batches(tokenizer, rank: int) -> list[dict[str, torch.Tensor]]:
    """One batch per rank, different across ranks (the reduced gradients are real averages), repeated each step
    (so four steps visibly lower the loss)."""
    generator = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(3, tokenizer.vocab_size, (4, 24), generator=generator)
    labels = torch.randint(3, tokenizer.vocab_size, (4, 6), generator=generator)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}] * STEPS


def train(strategy, engine, data, steps: range, grad_norms: list[float]) -> list[float]:
    losses = []
    for step in steps:
        loss = engine(**data[step]).loss
        losses.append(loss.item())
        strategy.backward_step(engine, loss)
        grad_norms.append(strategy.grad_norm(engine))
    return losses


def whole_weights(strategy, engine) -> dict[str, torch.Tensor]:
    """Every rank's copy of the whole model (gathered under ZeRO-3: a collective)."""
    if engine.zero_optimization_partition_weights():
        return strategy.broadcast_object(engine._zero3_consolidated_16bit_state_dict())
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def reference_grad_norm(overrides: list[str], strategy, engine, batch) -> float:
    """The norm of the ranks' mean gradient, from a plain replica of the engine's weights: what ZeRO's must equal."""
    weights = whole_weights(strategy, engine)
    replica = build_model(load_config(overrides=overrides).model, engine.module.config)
    replica.load_state_dict(weights, strict=False)  # the tied output layer comes with `shared`
    replica(**batch).loss.backward()
    grads = [p.grad for p in replica.parameters() if p.grad is not None]
    for grad in grads:
        torch.distributed.all_reduce(grad)
        grad /= strategy.world_size
    return float(torch.nn.utils.get_total_norm(grads))


def main(out: Path, *overrides: str) -> None:
    report = {}
    for stage in (1, 2, 3):
        stage_overrides = [*overrides, f"ds.template=zero{stage}"]
        strategy, engine, tokenizer, parameters = engine_for(stage_overrides, init_seed=0)
        data = batches(tokenizer, strategy.rank)
        reference_norm = reference_grad_norm(stage_overrides, strategy, engine, data[0])
        straight_norms, resumed_norms = [], []
        straight = train(strategy, engine, data, range(STEPS), straight_norms)
        strategy.export_model(engine, tokenizer, out / f"zero{stage}" / "straight")
        engine.destroy()

        strategy, engine, tokenizer, _ = engine_for(stage_overrides, init_seed=0)
        first = train(strategy, engine, data, range(RESUME_AT), resumed_norms)
        strategy.save_checkpoint(engine, out / f"zero{stage}" / "checkpoint", {"global_step": RESUME_AT})
        engine.destroy()
        strategy, engine, tokenizer, _ = engine_for(stage_overrides, init_seed=1)  # other weights: load must win
        state = strategy.load_checkpoint(engine, out / f"zero{stage}" / "checkpoint")
        resumed = train(strategy, engine, data, range(state["global_step"], STEPS), resumed_norms)
        strategy.export_model(engine, tokenizer, out / f"zero{stage}" / "resumed")
        engine.destroy()
        zero = strategy.resolved_config["zero_optimization"]
        report[f"zero{stage}"] = {
            "parameters": parameters,
            "buckets": {k: v for k, v in zero.items() if k in ("reduce_bucket_size", "allgather_bucket_size")},
            "straight": straight,
            "resumed": first + resumed,
            "grad_norms": strategy.all_gather_objects({"straight": straight_norms, "resumed": resumed_norms}),
            "reference_grad_norm": reference_norm,
        }
    if strategy.is_rank_zero:
        (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
