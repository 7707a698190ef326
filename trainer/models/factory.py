"""Model and tokenizer construction: HF names/paths for real runs, tiny random presets for offline ones."""

from __future__ import annotations

from collections.abc import Callable

from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
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


def build_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, tracking_uri: str | None = None
) -> T5ForConditionalGeneration:
    """Load any HF seq2seq checkpoint (name or local path) or initialise a preset for the tokenizer."""
    if not is_preset(cfg.name):
        return AutoModelForSeq2SeqLM.from_pretrained(resolve_model_source(cfg.name, tracking_uri))
    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=True,
        **TINY_PRESETS[cfg.name],
    )
    return T5ForConditionalGeneration(config)
