"""Model and tokenizer construction: HF names/paths for real runs, tiny random presets for offline ones."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
)

from trainer.config.schema import ModelConfig
from trainer.models.sources import resolve_model_source
from trainer.models.tokenizer import tokenizer_from_json, train_tokenizer_json

# Randomly initialised T5 shapes; they train in minutes on CPU and exercise every code path of real T5.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "t5-tiny": {
        "d_model": 64,
        "d_ff": 256,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "d_kv": 16,
    },
    "t5-mini": {
        "d_model": 128,
        "d_ff": 512,
        "num_layers": 4,
        "num_decoder_layers": 4,
        "num_heads": 4,
        "d_kv": 32,
    },
}


def is_preset(name: str) -> bool:
    return name in TINY_PRESETS


def build_tokenizer(
    cfg: ModelConfig,
    corpus: Callable[[], list[str]],
    broadcast: Callable[[str], str],
    source: str | None = None,
    tracking_uri: str | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer at `source` (name, path or MLflow model URI; default: the model's own), or for presets
    one trained offline on rank 0's corpus and broadcast, which guarantees identical vocabularies."""
    source = source or cfg.tokenizer or (None if is_preset(cfg.name) else cfg.name)
    if source is not None:
        return AutoTokenizer.from_pretrained(resolve_model_source(source, tracking_uri))
    return tokenizer_from_json(broadcast(train_tokenizer_json(corpus(), cfg.tokenizer_vocab_size)))


def build_model_config(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, tracking_uri: str | None = None
) -> PretrainedConfig:
    """The architecture, known before any weight exists, so ZeRO-3 can be configured to partition at build."""
    if not is_preset(cfg.name):
        return AutoConfig.from_pretrained(resolve_model_source(cfg.name, tracking_uri))
    return T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=True,
        **TINY_PRESETS[cfg.name],
    )


def build_model(cfg: ModelConfig, config: PretrainedConfig) -> PreTrainedModel:
    """Pretrained weights from the config's source (name, path, resolved MLflow model), or a fresh preset.

    Both paths honour an active transformers HfDeepSpeedConfig, i.e. build directly partitioned under ZeRO-3.
    """
    if is_preset(cfg.name):
        return AutoModelForSeq2SeqLM.from_config(config)
    return AutoModelForSeq2SeqLM.from_pretrained(config.name_or_path, config=config)


def model_hidden_size(config: PretrainedConfig) -> int:
    """The width DeepSpeed's bucket sizes follow: T5's d_model, an encoder's hidden_size."""
    size = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    if not size:
        raise ValueError(f"model config {type(config).__name__} names neither d_model nor hidden_size")
    return int(size)


def count_parameters(model: torch.nn.Module) -> int:
    """Full parameter count, also for ZeRO-3-partitioned parameters (whose local numel is 0)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
