"""Model and tokenizer construction: HF names/paths/MLflow URIs, and presets (trainer/models/presets.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from trainer.config.schema import ModelConfig
from trainer.models.presets import check_shape, get_preset, is_preset, pretrained_source
from trainer.models.sources import resolve_model_source
from trainer.models.tokenizer import tokenizer_from_json, train_tokenizer_json

# transformers' per-model classes are imported where they are used: the first one scans every model package
# transformers ships (0.4-1.5 s), and its modelling code (~2 s: model loading, generation, integrations) loads with a
# model; importing this module costs neither.
if TYPE_CHECKING:
    from transformers import PreTrainedModel


def build_tokenizer(
    cfg: ModelConfig,
    corpus: Callable[[], list[str]],
    broadcast: Callable[[str], str],
    source: str | None = None,
    tracking_uri: str | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer at `source` (name, path or MLflow model URI; default: the model's own), or for presets
    without weights one trained offline on rank 0's corpus and broadcast, which guarantees identical vocabularies."""
    from transformers import AutoTokenizer

    default = pretrained_source(cfg, broadcast) if is_preset(cfg.name) else cfg.name
    source = source or cfg.tokenizer or default
    if source is not None:
        return AutoTokenizer.from_pretrained(resolve_model_source(source, tracking_uri))
    return tokenizer_from_json(broadcast(train_tokenizer_json(corpus(), cfg.tokenizer_vocab_size)))


def build_model_config(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, tracking_uri: str | None = None
) -> PretrainedConfig:
    """The architecture, known before any weight exists, so ZeRO-3 can be configured to partition at build."""
    from transformers import AutoConfig, T5Config

    if not is_preset(cfg.name):
        return AutoConfig.from_pretrained(resolve_model_source(cfg.name, tracking_uri))
    preset = get_preset(cfg.name)
    weights = pretrained_source(cfg)
    if weights is not None:
        config = AutoConfig.from_pretrained(weights)
        check_shape(preset, config)
        return config
    architecture = preset.architecture_for(len(tokenizer))
    if len(tokenizer) > architecture.vocab_size:
        raise ValueError(
            f"model.tokenizer_vocab_size: {len(tokenizer)} tokens do not fit {cfg.name}'s {architecture.vocab_size}"
        )
    return T5Config(**architecture.config_kwargs(tokenizer.pad_token_id, tokenizer.eos_token_id))


def build_model(cfg: ModelConfig, config: PretrainedConfig) -> PreTrainedModel:
    """Pretrained weights from the config's source (name, path, resolved MLflow model), or a fresh preset.

    Both paths honour an active transformers HfDeepSpeedConfig, i.e. build directly partitioned under ZeRO-3.
    """
    from transformers import AutoModelForSeq2SeqLM

    if is_preset(cfg.name) and pretrained_source(cfg) is None:
        model = AutoModelForSeq2SeqLM.from_config(config)
        if not get_preset(cfg.name).architecture.tie_word_embeddings:
            _untie_output_layer(model)
    else:
        assert config.name_or_path is not None, "PretrainedConfig sets name_or_path to a string"
        model = AutoModelForSeq2SeqLM.from_pretrained(config.name_or_path, config=config)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def _untie_output_layer(model: PreTrainedModel) -> None:
    """T5 v1.1 and Flan-T5 have their own output layer, but transformers 5 ties it to the input embedding
    when a T5 is built from a config; give it its own weights so the shape is the published one."""
    head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
    torch.nn.init.normal_(head.weight, std=model.config.initializer_factor)  # T5's init of an untied head
    model.lm_head = head
    model.all_tied_weights_keys.pop("lm_head.weight", None)  # else a later tie_weights() would share it again


def model_hidden_size(config: PretrainedConfig) -> int:
    """The width DeepSpeed's bucket sizes follow: T5's d_model, an encoder's hidden_size."""
    size = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    if not size:
        raise ValueError(f"model config {type(config).__name__} names neither d_model nor hidden_size")
    return int(size)


def count_parameters(model: torch.nn.Module) -> int:
    """Full parameter count, also for ZeRO-3-partitioned parameters (whose local numel is 0)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
