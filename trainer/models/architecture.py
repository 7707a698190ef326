"""The one description of a T5 architecture: what presets build, what FLOPs, memory plans and parameter counts
are computed from, and what the GPU benchmark records of the model that ran."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

T5_VOCAB_SIZE = 32128  # the published checkpoints' embedding rows (32100 sentencepiece pieces, padded to 128)
T5_MODEL_TYPES = ("t5", "mt5", "umt5")


class ArchitectureError(ValueError):
    """A model whose architecture cannot be read: unknown name, missing config.json, or not a T5."""


@dataclass(frozen=True)
class T5Architecture:
    """The fields of a T5Config that decide parameter count, FLOPs, memory and speed.

    `name` only labels it in messages (a preset, hub name or path); two architectures with the same fields are
    equal whatever they are called.
    """

    d_model: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_kv: int
    feed_forward_proj: str  # "relu" (original T5) or "gated-gelu" (T5 v1.1, Flan-T5)
    tie_word_embeddings: bool
    vocab_size: int = T5_VOCAB_SIZE
    relative_attention_num_buckets: int = 32
    dropout_rate: float = 0.1
    name: str = field(default="t5", compare=False)

    @property
    def gated(self) -> bool:
        """A gated feed-forward (wi_0, wi_1, wo) rather than the original wi, wo."""
        return self.feed_forward_proj.startswith("gated-")

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.gated else 2

    @property
    def inner_dim(self) -> int:
        """Width of the concatenated attention heads (num_heads × d_kv; 4096 for t5-3b, not d_model)."""
        return self.num_heads * self.d_kv

    @property
    def num_parameters(self) -> int:
        """Every parameter of HF's T5ForConditionalGeneration once (tied embeddings are one tensor), as HF and
        DeepSpeed count them."""
        d = self.d_model
        attention = 4 * d * self.inner_dim  # q, k, v, o
        feed_forward = self.ffn_matrices * d * self.d_ff
        encoder_layer = attention + feed_forward + 2 * d
        decoder_layer = 2 * attention + feed_forward + 3 * d
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

    def config_kwargs(self, pad_token_id: int, eos_token_id: int) -> dict[str, Any]:
        """T5Config keyword arguments; T5 starts decoding from the pad token."""
        return {
            "d_model": self.d_model,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "d_kv": self.d_kv,
            "feed_forward_proj": self.feed_forward_proj,
            "tie_word_embeddings": self.tie_word_embeddings,
            "vocab_size": self.vocab_size,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "dropout_rate": self.dropout_rate,
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
            "decoder_start_token_id": pad_token_id,
            "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6,
        }

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | Any, name: str | None = None) -> T5Architecture:
        """From a T5Config object or a config.json mapping."""
        get: Callable[..., Any] = (
            config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
        )
        model_type = get("model_type", "t5")
        if model_type not in T5_MODEL_TYPES:
            raise ArchitectureError(f"{name or 'model'}: model_type {model_type!r} is not a T5")
        return cls(
            d_model=int(get("d_model")),
            d_ff=int(get("d_ff")),
            num_layers=int(get("num_layers")),
            num_decoder_layers=int(get("num_decoder_layers", None) or get("num_layers")),
            num_heads=int(get("num_heads")),
            d_kv=int(get("d_kv")),
            feed_forward_proj=str(get("feed_forward_proj", "relu")),
            tie_word_embeddings=bool(get("tie_word_embeddings", True)),
            vocab_size=int(get("vocab_size", T5_VOCAB_SIZE)),
            relative_attention_num_buckets=int(get("relative_attention_num_buckets", 32)),
            dropout_rate=float(get("dropout_rate", 0.1)),
            name=name or str(get("_name_or_path", "") or get("name_or_path", "") or "t5"),
        )
