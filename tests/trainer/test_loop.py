"""The loop's model construction: activation checkpointing from the config, under ZeRO-2 and ZeRO-3."""

import pytest

from trainer.config import load_config
from trainer.loop import build_trained_model
from trainer.models.factory import build_model_config, build_tokenizer
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy

CORPUS = [f"question {i}: is item {i % 7} heavier than item {i % 5}? answer yes or no" for i in range(64)]


def _losses(*overrides: str) -> tuple[list[float], bool]:
    """Five steps of a real one-rank DeepSpeed engine on one fixed batch (the first two run at warm-up lr)."""
    cfg = load_config(overrides=["model.name=t5-tiny", "model.tokenizer_vocab_size=100", "optim.lr=0.01", *overrides])
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    tokenizer = build_tokenizer(cfg.model, lambda: CORPUS, strategy.broadcast_object)
    model_config = build_model_config(cfg.model, tokenizer)
    strategy.configure(model_config.d_model)
    model = build_trained_model(cfg, model_config, strategy)
    checkpointing = model.is_gradient_checkpointing
    engine = strategy.prepare(model)
    batch = tokenizer(CORPUS[:4], return_tensors="pt", padding=True)
    labels = tokenizer(["yes", "no", "no", "yes"], return_tensors="pt")["input_ids"]
    losses = []
    for _ in range(5):
        loss = engine(**batch, labels=labels).loss
        losses.append(loss.item())
        strategy.backward_step(engine, loss)
    return losses, checkpointing


@pytest.mark.parametrize("template", ["zero2", "zero3"])
def test_gradient_checkpointing_recomputes_without_changing_the_training(template: str) -> None:
    plain, plain_checkpointing = _losses(f"ds.template={template}")
    recomputed, checkpointing = _losses(f"ds.template={template}", "model.gradient_checkpointing=true")
    assert (plain_checkpointing, checkpointing) == (False, True)
    assert recomputed == pytest.approx(plain, rel=1e-6)
    assert plain[-1] < plain[0]  # the steps did train
