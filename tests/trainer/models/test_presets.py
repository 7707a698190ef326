"""Scale presets: published T5 shapes built randomly initialised offline, real weights from a local copy,
tiny presets unchanged, gradient checkpointing, and one weights decision for all ranks."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, T5Config

from trainer.config.schema import ModelConfig
from trainer.models import presets
from trainer.models.factory import build_model, build_model_config, build_tokenizer, count_parameters
from trainer.models.presets import PRESETS, get_preset, pretrained_source, weights_tags
from trainer.planning.architecture import resolve_architecture

CORPUS = ["can a fish climb trees ? no , fish have no legs .", "is the sun a star ? yes ."] * 20

# From the published checkpoints' config.json files and their parameter counts as HF reports them.
PUBLISHED = {
    "t5-small": (512, 2048, 6, 8, 64, "relu", True, 60_506_624),
    "t5-base": (768, 3072, 12, 12, 64, "relu", True, 222_903_552),
    "t5-large": (1024, 4096, 24, 16, 64, "relu", True, 737_668_096),
    "t5-3b": (1024, 16384, 24, 32, 128, "relu", True, 2_851_598_336),
    "t5-v1_1-small": (512, 1024, 8, 6, 64, "gated-gelu", False, 76_961_152),
    "t5-v1_1-base": (768, 2048, 12, 12, 64, "gated-gelu", False, 247_577_856),
    "t5-v1_1-large": (1024, 2816, 24, 16, 64, "gated-gelu", False, 783_150_080),
    "t5-v1_1-xl": (2048, 5120, 24, 32, 64, "gated-gelu", False, 2_849_757_184),
    "flan-t5-small": (512, 1024, 8, 6, 64, "gated-gelu", False, 76_961_152),
    "flan-t5-base": (768, 2048, 12, 12, 64, "gated-gelu", False, 247_577_856),
    "flan-t5-large": (1024, 2816, 24, 16, 64, "gated-gelu", False, 783_150_080),
    "flan-t5-xl": (2048, 5120, 24, 32, 64, "gated-gelu", False, 2_849_757_184),
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    """The hub is unreachable here anyway; this makes any connection attempt fail loudly, and offline mode
    keeps huggingface_hub from retrying for 30 s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    presets._decisions.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("a preset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    presets._decisions.clear()


def build(cfg: ModelConfig) -> torch.nn.Module:
    tokenizer = build_tokenizer(cfg, lambda: CORPUS, broadcast=lambda x: x)
    return build_model(cfg, build_model_config(cfg, tokenizer)), tokenizer


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_shapes(name: str) -> None:
    d_model, d_ff, layers, heads, d_kv, ff, tied, count = PUBLISHED[name]
    preset = get_preset(name)
    shape = preset.architecture
    assert (shape.d_model, shape.d_ff, shape.num_layers, shape.num_decoder_layers) == (d_model, d_ff, layers, layers)
    assert (shape.num_heads, shape.d_kv, shape.feed_forward_proj, shape.tie_word_embeddings) == (heads, d_kv, ff, tied)
    assert shape.vocab_size == 32128
    assert shape.num_parameters == count


@pytest.mark.parametrize("name", ["t5-small", "t5-3b", "flan-t5-xl", "t5-v1_1-large"])
def test_analytic_count_matches_the_built_model(name: str) -> None:
    """The planner's formula against transformers' own model, built on the meta device (no memory)."""
    config = T5Config(**PRESETS[name].architecture.config_kwargs(pad_token_id=0, eos_token_id=1))
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    tied = PRESETS[name].architecture.tie_word_embeddings
    untied_head = 0 if tied else config.vocab_size * config.d_model  # transformers 5 ties it; the factory unties
    assert sum(p.numel() for p in model.parameters()) + untied_head == resolve_architecture(name).num_parameters


def test_random_t5_small_builds_offline_with_the_real_parameter_count(no_network, caplog) -> None:
    cfg = ModelConfig(name="t5-small", tokenizer_vocab_size=200)
    with caplog.at_level(logging.WARNING, logger="trainer.models.presets"):
        model, tokenizer = build(cfg)
    assert count_parameters(model) == 60_506_624
    assert model.config.vocab_size == 32128 and len(tokenizer) <= 200
    assert "randomly initialised" in caplog.text and "google-t5/t5-small" in caplog.text
    assert weights_tags(cfg) == {"model.weights": "random"}
    batch = tokenizer(["is the sun a star ?"], return_tensors="pt")
    loss = model(**batch, labels=tokenizer(["yes"], return_tensors="pt").input_ids).loss
    assert torch.isfinite(loss)


def test_random_flan_t5_keeps_its_own_output_layer_through_export(no_network, tmp_path: Path) -> None:
    cfg = ModelConfig(name="flan-t5-small", init="random", tokenizer_vocab_size=200)
    model, tokenizer = build(cfg)
    assert count_parameters(model) == 76_961_152
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert model.config.scale_decoder_outputs is False  # v1.1 does not rescale before the LM head
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert count_parameters(reloaded) == 76_961_152
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_preset_loads_real_weights_from_a_local_copy(no_network, tmp_path: Path) -> None:
    source, _ = build(ModelConfig(name="t5-small", init="random", tokenizer_vocab_size=200))
    source.save_pretrained(tmp_path / "t5-small")
    cfg = ModelConfig(name="t5-small", weights_from=str(tmp_path / "t5-small"), tokenizer_vocab_size=200)
    assert pretrained_source(cfg) == str(tmp_path / "t5-small")
    config = build_model_config(cfg, tokenizer=None)
    model = build_model(cfg, config)
    assert torch.equal(model.shared.weight, source.shared.weight)
    assert weights_tags(cfg) == {"model.weights": "pretrained", "model.weights_source": str(tmp_path / "t5-small")}
    wrong = ModelConfig(name="t5-base", weights_from=str(tmp_path / "t5-small"))
    with pytest.raises(ValueError, match="d_model=512, but t5-base has 768"):
        build_model_config(wrong, tokenizer=None)


def test_unreachable_weights_fail_when_required(no_network, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.init=pretrained"):
        pretrained_source(ModelConfig(name="t5-base", init="pretrained"))
    with pytest.raises(FileNotFoundError, match="model.weights_from"):
        pretrained_source(ModelConfig(name="t5-base", weights_from=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="offline shape"):
        pretrained_source(ModelConfig(name="t5-tiny", weights_from=str(tmp_path)))


def test_rank_zero_decides_for_every_rank(no_network, tmp_path: Path) -> None:
    """A rank that could see the weights still follows rank 0's decision (here: none reachable)."""
    build(ModelConfig(name="t5-small", init="random"))[0].save_pretrained(tmp_path / "w")
    cfg = ModelConfig(name="t5-small", weights_from=str(tmp_path / "w"))
    assert pretrained_source(cfg, broadcast=lambda local: "random") is None
    assert pretrained_source(cfg) is None  # decided once per process
    failing = ModelConfig(name="t5-large", init="pretrained")
    with pytest.raises(FileNotFoundError, match="rank zero says no"):
        pretrained_source(failing, broadcast=lambda local: "error:rank zero says no")


def test_tiny_presets_are_unchanged(no_network) -> None:
    cfg = ModelConfig(name="t5-tiny", tokenizer_vocab_size=200)
    tokenizer = build_tokenizer(cfg, lambda: CORPUS, broadcast=lambda x: x)
    config = build_model_config(cfg, tokenizer)
    assert (config.d_model, config.d_ff, config.num_layers, config.num_decoder_layers) == (64, 256, 2, 2)
    assert (config.num_heads, config.d_kv, config.feed_forward_proj, config.dropout_rate) == (4, 16, "gated-gelu", 0.0)
    assert config.vocab_size == len(tokenizer) and config.decoder_start_token_id == tokenizer.pad_token_id
    assert weights_tags(cfg) == {"model.weights": "random"}
    mini = build_model_config(ModelConfig(name="t5-mini"), tokenizer)
    assert (mini.d_model, mini.d_ff, mini.num_layers, mini.num_heads, mini.d_kv) == (128, 512, 4, 4, 32)


def test_gradient_checkpointing_gives_the_same_gradients(no_network) -> None:
    def grads(checkpointing: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        cfg = ModelConfig(name="t5-tiny", tokenizer_vocab_size=200, gradient_checkpointing=checkpointing)
        model, tokenizer = build(cfg)
        assert model.is_activation_checkpointing is checkpointing
        model.train()
        batch = tokenizer(["is the sun a star ?", "can a fish climb trees ?"], return_tensors="pt", padding=True)
        labels = tokenizer(["yes", "no"], return_tensors="pt", padding=True).input_ids
        model(**batch, labels=labels).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, checkpointed)
