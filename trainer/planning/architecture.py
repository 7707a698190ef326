"""A T5-family architecture as the planner needs it: exact parameter counts without building a model."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.models.presets import PRESETS, T5_VOCAB_SIZE

T5_MODEL_TYPES = ("t5", "mt5", "umt5")
# Hub names of the published presets, so a config naming the checkpoint (google/flan-t5-xl) plans offline.
_PRESET_BY_HUB_NAME = {preset.hub_name: name for name, preset in PRESETS.items() if preset.hub_name}


class ArchitectureError(ValueError):
    """A model the planner cannot size: unknown name, missing config.json, or not a T5."""


@dataclass(frozen=True)
class T5Architecture:
    name: str
    vocab_size: int
    d_model: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_kv: int
    gated: bool
    tie_word_embeddings: bool
    relative_attention_num_buckets: int = 32
    dropout_rate: float = 0.1

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def _attention_parameters(self) -> int:
        return 4 * self.d_model * self.inner_dim  # q, k, v, o

    def _feed_forward_parameters(self) -> int:
        return (3 if self.gated else 2) * self.d_model * self.d_ff  # wi (wi_0, wi_1), wo

    @property
    def num_parameters(self) -> int:
        """Every parameter once (tied embeddings are one tensor), as HF and DeepSpeed count them."""
        d = self.d_model
        encoder_layer = self._attention_parameters() + self._feed_forward_parameters() + 2 * d
        decoder_layer = 2 * self._attention_parameters() + self._feed_forward_parameters() + 3 * d
        relative_bias = 2 * self.relative_attention_num_buckets * self.num_heads  # first layer of each stack
        embeddings = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        final_norms = 2 * d
        return (
            embeddings
            + self.num_layers * encoder_layer
            + self.num_decoder_layers * decoder_layer
            + relative_bias
            + final_norms
        )

    @property
    def largest_layer_parameters(self) -> int:
        """The largest module's own parameters (DeepSpeed's ZeRO-3 estimator gathers one such at a time)."""
        return max(self.vocab_size * self.d_model, self.d_model * self.d_ff, self.d_model * self.inner_dim)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | Any, name: str | None = None) -> T5Architecture:
        """From a T5Config (object or config.json mapping)."""
        get: Callable[..., Any] = (
            config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
        )
        model_type = get("model_type", "t5")
        if model_type not in T5_MODEL_TYPES:
            raise ArchitectureError(f"{name or 'model'}: model_type {model_type!r} is not a T5; the planner sizes T5s")
        feed_forward = str(get("feed_forward_proj", "relu"))
        return cls(
            name=name or str(get("_name_or_path", "") or get("name_or_path", "") or "t5"),
            vocab_size=int(get("vocab_size", T5_VOCAB_SIZE)),
            d_model=int(get("d_model")),
            d_ff=int(get("d_ff")),
            num_layers=int(get("num_layers")),
            num_decoder_layers=int(get("num_decoder_layers", None) or get("num_layers")),
            num_heads=int(get("num_heads")),
            d_kv=int(get("d_kv")),
            gated=feed_forward.startswith("gated-"),
            tie_word_embeddings=bool(get("tie_word_embeddings", True)),
            relative_attention_num_buckets=int(get("relative_attention_num_buckets", 32)),
            dropout_rate=float(get("dropout_rate", 0.1)),
        )

    @classmethod
    def from_preset(cls, name: str, vocab_size: int | None = None) -> T5Architecture:
        """A preset's shape; tiny presets take the offline tokenizer's size (`vocab_size`, default 4000)."""
        preset = PRESETS[name]
        vocab = T5_VOCAB_SIZE if preset.published else (vocab_size or 4000)
        return cls.from_hf_config({**preset.config_kwargs(vocab, 0, 1), "model_type": "t5"}, name=name)


def resolve_architecture(model: str, tokenizer_vocab_size: int | None = None) -> T5Architecture:
    """A preset name, a published checkpoint's hub name, a directory with config.json, or a config.json file."""
    if model in PRESETS:
        return T5Architecture.from_preset(model, tokenizer_vocab_size)
    if model in _PRESET_BY_HUB_NAME:
        return dataclasses.replace(T5Architecture.from_preset(_PRESET_BY_HUB_NAME[model]), name=model)
    path = Path(model).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if config_file.is_file():
        try:
            return T5Architecture.from_hf_config(json.loads(config_file.read_text()), name=model)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ArchitectureError(f"{config_file}: not a readable T5 config.json ({exc})") from None
    raise ArchitectureError(
        f"{model!r} is neither a preset ({', '.join(PRESETS)}), a published T5 hub name, nor a path to a "
        "config.json; the planner needs the architecture without downloading anything"
    )
