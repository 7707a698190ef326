"""Optimizer parameter groups: biases and norm weights undecayed (auxiliary modules too), embeddings decayed; the
groups survive a checkpoint round trip under ZeRO-1/2/3, and a checkpoint of other groups is refused by name."""

from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from tests.trainer.strategy.strategy_setup import configured_strategy
from trainer.models.factory import build_model
from trainer.strategy.deepspeed_strategy import PARAM_GROUPS_PREFIX
from trainer.strategy.param_groups import no_decay_parameter_names, weight_decay_groups


def tiny_t5() -> T5ForConditionalGeneration:
    config = T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=2, num_decoder_layers=1, num_heads=2, d_kv=8)
    return T5ForConditionalGeneration(config)


def names_of(model: torch.nn.Module, group: dict) -> list[str]:
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


def test_t5_norm_weights_form_the_undecayed_group() -> None:
    model = tiny_t5()
    decayed, undecayed = weight_decay_groups(model, decay_norm_and_bias=False)
    assert "weight_decay" not in decayed and undecayed["weight_decay"] == 0.0  # the decayed group: the config's
    undecayed_names = names_of(model, undecayed)
    # 2 encoder blocks x 2 layers + 1 decoder block x 3 layers, and each stack's final norm.
    assert len(undecayed_names) == 2 * 2 + 3 + 2
    assert all(name.endswith(("layer_norm.weight", "final_layer_norm.weight")) for name in undecayed_names)
    decayed_names = names_of(model, decayed)
    assert "shared.weight" in decayed_names  # embeddings, relative position tables included, stay decayed
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in decayed_names
    # Every trainable tensor exactly once, each group in model order.
    everything = [name for name, _ in model.named_parameters()]
    assert sorted(decayed_names + undecayed_names) == sorted(everything)
    assert decayed_names == [n for n in everything if n in decayed_names]
    assert undecayed_names == [n for n in everything if n in undecayed_names]

    [single] = weight_decay_groups(model, decay_norm_and_bias=True)
    assert names_of(model, single) == everything and "weight_decay" not in single


def test_biases_and_torch_norms_are_undecayed_frozen_parameters_left_out() -> None:
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(4, 4))
    model.add_module("ln", torch.nn.LayerNorm(4))
    model.add_module("normalizer_scale", torch.nn.Linear(4, 4, bias=False))  # a "*norm*" module name
    model.add_module("table", torch.nn.Embedding(8, 4))
    model.add_module("frozen", torch.nn.Linear(4, 4))
    model.frozen.requires_grad_(False)
    assert no_decay_parameter_names(model) == {"proj.bias", "ln.weight", "ln.bias", "normalizer_scale.weight"}
    decayed, _ = weight_decay_groups(model, decay_norm_and_bias=False)
    assert names_of(model, decayed) == ["proj.weight", "table.weight"]
    assert weight_decay_groups(torch.nn.Linear(2, 2, bias=False), decay_norm_and_bias=False)[0].keys() == {"params"}


def engine_for(tiny_config, stage: int, *overrides: str, seed: int = 0):
    cfg = tiny_config(f"ds.template=zero{stage}", "optim.weight_decay=0.1", "optim.lr=0.01", *overrides)
    strategy, tokenizer, model_config = configured_strategy(cfg)
    torch.manual_seed(seed)
    with strategy.partitioned_init(strategy.resolved_config):
        model = build_model(cfg.model, model_config)
    projection = torch.nn.Linear(model_config.d_model, 8)  # an auxiliary module, as KNIFE's projection joins
    return strategy, strategy.prepare(model, {"aux_projection": projection}), tokenizer


def batch_for(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(["question: is water wet? options: (A) yes (B) no"] * 2, return_tensors="pt", padding=True)
    return {**enc, "labels": tokenizer(["yes", "no"], return_tensors="pt", padding=True)["input_ids"]}


def train_step(strategy, engine, batch) -> None:
    """One step whose loss also reaches the auxiliary projection, so its weight and bias get gradients."""
    out = engine(**batch, output_hidden_states=True)
    aux = engine.module.aux_projection(out.encoder_last_hidden_state).pow(2).mean()
    assert strategy.backward_step(engine, out.loss + aux)


@pytest.mark.parametrize("stage", [1, 3])
def test_groups_reach_deepspeed_and_round_trip_a_checkpoint(tiny_config, tmp_path: Path, stage: int) -> None:
    strategy, engine, tokenizer = engine_for(tiny_config, stage)
    groups = engine.basic_optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    undecayed = no_decay_parameter_names(engine.module)
    assert "aux_projection.bias" in undecayed and "aux_projection.weight" not in undecayed
    assert strategy.param_group_sizes == [len(list(engine.module.parameters())) - len(undecayed), len(undecayed)]

    batch = batch_for(tokenizer)
    for _ in range(2):
        train_step(strategy, engine, batch)
    strategy.save_checkpoint(engine, tmp_path / "ckpt", {"global_step": 2})
    assert (tmp_path / "ckpt" / f"{PARAM_GROUPS_PREFIX}0.json").is_file()
    fresh_strategy, fresh, _ = engine_for(tiny_config, stage, seed=1)  # other weights: the load must win
    assert fresh_strategy.load_checkpoint(fresh, tmp_path / "ckpt") == {"global_step": 2}
    # Optimizer state and groups came back: one more step on each gives the same weights, to the bit.
    train_step(strategy, engine, batch)
    train_step(fresh_strategy, fresh, batch)
    for (key, a), b in zip(exported(strategy, engine).items(), exported(fresh_strategy, fresh).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def exported(strategy, engine) -> dict[str, torch.Tensor]:
    """Whole weights (gathered under ZeRO-3)."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def test_a_checkpoint_of_other_groups_is_refused_naming_the_setting(tiny_config, tmp_path: Path) -> None:
    strategy, engine, tokenizer = engine_for(tiny_config, 2, "optim.decay_norm_and_bias=true")
    assert strategy.param_group_sizes == [len(list(engine.module.parameters()))]
    train_step(strategy, engine, batch_for(tokenizer))
    strategy.save_checkpoint(engine, tmp_path / "ckpt", {"global_step": 1})
    grouped_strategy, grouped, _ = engine_for(tiny_config, 2)
    with pytest.raises(ValueError, match=r"optim.decay_norm_and_bias=true\), this run builds .* resume with the"):
        grouped_strategy.load_checkpoint(grouped, tmp_path / "ckpt")
    (tmp_path / "ckpt" / f"{PARAM_GROUPS_PREFIX}0.json").unlink()  # as saved before the groups existed
    with pytest.raises(ValueError, match="one optimizer parameter group .* optim.decay_norm_and_bias=true"):
        grouped_strategy.load_checkpoint(grouped, tmp_path / "ckpt")
    assert strategy.load_checkpoint(engine, tmp_path / "ckpt") == {"global_step": 1}  # one group: loads as before
