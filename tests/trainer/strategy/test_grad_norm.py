"""DeepSpeedStrategy.grad_norm: the pre-clipping norm of the step's whole accumulated gradient, at every ZeRO stage
(stage 0: computed by the strategy, DeepSpeed keeps none). Two ranks: resume_ranks.py / test_bucket_resume."""

import pytest
import torch

from tests.trainer.strategy.strategy_setup import configured_strategy
from trainer.models.factory import build_model


def batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    questions = [["question: is water wet?"] * 2, ["question: can a fish climb a tree? options: (A) yes (B) no"] * 2]
    out = []
    for texts, answers in zip(questions, (["yes", "no"], ["no", "no"]), strict=True):
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        out.append({**enc, "labels": tokenizer(answers, return_tensors="pt", padding=True)["input_ids"]})
    return out


def initial_weights(engine) -> dict[str, torch.Tensor]:
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_grad_norm_is_the_accumulated_gradients_norm_before_clipping(tiny_config, stage: int) -> None:
    cfg = tiny_config(
        f"ds.zero_stage={stage}",
        "optim.gradient_accumulation_steps=2",
        "optim.gradient_clipping=0.01",  # far below the norm: the logged norm is the one before clipping
    )
    strategy, tokenizer, model_config = configured_strategy(cfg)
    with strategy.partitioned_init(strategy.resolved_config):
        model = build_model(cfg.model, model_config)
    engine = strategy.prepare(model)
    reference = build_model(cfg.model, model_config)
    loaded = reference.load_state_dict(initial_weights(engine), strict=False)
    assert not loaded.unexpected_keys and set(loaded.missing_keys) <= {"lm_head.weight"}  # tied to `shared`

    data = batches(tokenizer)
    stepped = [strategy.backward_step(engine, engine(**batch).loss) for batch in data]
    assert stepped == [False, True]
    # DeepSpeed divides each micro-batch's loss by the accumulation steps: the step sees their mean gradient.
    (sum(reference(**batch).loss for batch in data) / len(data)).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters() if p.grad is not None])
    assert expected > 1.0
    assert strategy.grad_norm(engine) == pytest.approx(float(expected), rel=1e-5)
