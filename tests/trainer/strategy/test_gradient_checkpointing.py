"""model.gradient_checkpointing under real DeepSpeed engines: the same losses step for step, ZeRO-2 and ZeRO-3
(one rank, gloo), so the planner may switch it on without changing what is trained."""

from __future__ import annotations

import pytest
import torch

from trainer.config.loader import load_config
from trainer.methods.registry import method_class
from trainer.models.factory import build_model, build_model_config, build_tokenizer
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy


def losses(stage: int, checkpointing: bool) -> list[float]:
    cfg = load_config(
        overrides=[
            "model.name=t5-tiny",
            "model.tokenizer_vocab_size=200",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
            f"ds.zero_stage={stage}",
            f"ds.template=zero{stage}",
            "run.num_workers=1",
            "optim.micro_batch_size=4",
            "optim.warmup_steps=2",
            "optim.lr=0.01",
        ]
    )
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    tokenizer = build_tokenizer(
        cfg.model, lambda: ["the sun is a star , yes ; fish have no legs , no"] * 30, lambda x: x
    )
    model_config = build_model_config(cfg.model, tokenizer)
    strategy.configure(model_config.d_model)
    torch.manual_seed(0)
    with strategy.partitioned_init(strategy.resolved_config):
        model = build_model(cfg.model, model_config)
    assert model.is_activation_checkpointing is checkpointing
    engine = strategy.prepare(model)
    method = method_class(cfg)(cfg, tokenizer)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(3, len(tokenizer), (4, 16), generator=generator),
        "attention_mask": torch.ones(4, 16, dtype=torch.long),
        "labels": torch.randint(3, len(tokenizer), (4, 4), generator=generator),
    }
    out = []
    for _ in range(5):
        loss = method.loss(engine, batch)["loss"]
        out.append(float(loss))
        strategy.backward_step(engine, loss)
    engine.destroy()
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_checkpointing_trains_the_same(stage: int) -> None:
    plain, checkpointed = losses(stage, False), losses(stage, True)
    assert plain[-1] < plain[0]  # it does train
    assert checkpointed == pytest.approx(plain, rel=1e-4)
