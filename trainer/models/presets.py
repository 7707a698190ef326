"""Named T5 shapes: tiny offline ones for CPU runs, and the published T5 / T5 v1.1 / Flan-T5 architectures.

A published preset (`t5-base`, `flan-t5-xl`, ...) loads its real weights from the hub or a local path when they
can be had (`model.init`, `model.weights_from`) and otherwise builds the same architecture randomly initialised,
with the real 32128-row embedding and an offline tokenizer, so shape, memory and throughput are the real ones.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from trainer.config.schema import ModelConfig

logger = logging.getLogger(__name__)

T5_VOCAB_SIZE = 32128  # the published checkpoints' embedding rows (32100 sentencepiece pieces, padded to 128)


@dataclass(frozen=True)
class T5Shape:
    """The architecture fields of a T5Config that decide parameter count, memory and speed."""

    d_model: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_kv: int
    feed_forward_proj: Literal["relu", "gated-gelu"]
    tie_word_embeddings: bool


@dataclass(frozen=True)
class ModelPreset:
    """A named shape; `hub_name` is where its published weights live (None: an offline-only shape)."""

    name: str
    shape: T5Shape
    hub_name: str | None = None
    dropout_rate: float = 0.1

    @property
    def published(self) -> bool:
        return self.hub_name is not None

    def config_kwargs(self, vocab_size: int, pad_token_id: int, eos_token_id: int) -> dict[str, Any]:
        """T5Config keyword arguments; T5 starts decoding from the pad token."""
        return {
            **asdict(self.shape),
            "vocab_size": vocab_size,
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
            "decoder_start_token_id": pad_token_id,
            "dropout_rate": self.dropout_rate,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6,
        }


def _original(d_model: int, d_ff: int, layers: int, heads: int, d_kv: int) -> T5Shape:
    """Raffel et al. 2020: ReLU feed-forward, input and output embeddings shared."""
    return T5Shape(d_model, d_ff, layers, layers, heads, d_kv, "relu", True)


def _v1_1(d_model: int, d_ff: int, layers: int, heads: int) -> T5Shape:
    """T5 v1.1 (and Flan-T5, fine-tuned from it): gated-GELU feed-forward, untied output layer, d_kv 64."""
    return T5Shape(d_model, d_ff, layers, layers, heads, 64, "gated-gelu", False)


_V1_1_SHAPES = {
    "small": _v1_1(512, 1024, 8, 6),
    "base": _v1_1(768, 2048, 12, 12),
    "large": _v1_1(1024, 2816, 24, 16),
    "xl": _v1_1(2048, 5120, 24, 32),
}

PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in [
        # Tiny shapes (CPU minutes): the vocabulary is the offline tokenizer's, no dropout.
        ModelPreset("t5-tiny", T5Shape(64, 256, 2, 2, 4, 16, "gated-gelu", True), dropout_rate=0.0),
        ModelPreset("t5-mini", T5Shape(128, 512, 4, 4, 4, 32, "gated-gelu", True), dropout_rate=0.0),
        # Published shapes, from the checkpoints' config.json.
        ModelPreset("t5-small", _original(512, 2048, 6, 8, 64), "google-t5/t5-small"),
        ModelPreset("t5-base", _original(768, 3072, 12, 12, 64), "google-t5/t5-base"),
        ModelPreset("t5-large", _original(1024, 4096, 24, 16, 64), "google-t5/t5-large"),
        ModelPreset("t5-3b", _original(1024, 16384, 24, 32, 128), "google-t5/t5-3b"),
        *(ModelPreset(f"t5-v1_1-{size}", shape, f"google/t5-v1_1-{size}") for size, shape in _V1_1_SHAPES.items()),
        *(ModelPreset(f"flan-t5-{size}", shape, f"google/flan-t5-{size}") for size, shape in _V1_1_SHAPES.items()),
    ]
}


def is_preset(name: str) -> bool:
    return name in PRESETS


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise KeyError(f"model.name: {name!r} is not a preset (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def check_shape(preset: ModelPreset, config: Any) -> None:
    """Weights named for a preset must have its shape: a run labelled t5-base must train a t5-base."""
    for key, expected in asdict(preset.shape).items():
        if key == "tie_word_embeddings":  # transformers 5 rewrites it on load; the checkpoint decides
            continue
        found = getattr(config, key, None)
        if found != expected:
            raise ValueError(
                f"model.weights_from: {config.name_or_path} has {key}={found!r}, but {preset.name} has {expected!r}"
            )


def _hub_offline() -> bool:
    flags = (os.environ.get(k, "").lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes") for flag in flags)


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    """One TCP connect to the hub: an unreachable hub otherwise costs ~30 s of client retries."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _has_weights(source: str) -> bool:
    """A local HF directory, or a hub name whose config resolves from the cache or, if reachable, the hub."""
    if Path(source).expanduser().is_dir():
        return (Path(source).expanduser() / "config.json").is_file()
    from transformers import AutoConfig

    for local_only in (True, False):
        if not local_only and (_hub_offline() or not _hub_reachable()):
            return False
        try:
            AutoConfig.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError):
            continue
        return True
    return False


# Per process: (name, init, weights_from) -> "source:<weights>", "random", or "error:<why>".
_decisions: dict[tuple[str, str, str | None], str] = {}


def pretrained_source(cfg: ModelConfig, broadcast: Callable[[str], str] | None = None) -> str | None:
    """Where a published preset's weights come from (local dir or hub name), or None to initialise it randomly.

    Decided once per process. With `broadcast` (rank 0's value everywhere), rank 0 decides for all ranks:
    ranks that disagreed would build different tokenizers and mix pretrained with random weights.
    """
    preset = get_preset(cfg.name)
    if not preset.published:
        if cfg.weights_from is not None:
            raise ValueError(f"model.weights_from: {cfg.name!r} is an offline shape with no published weights")
        return None
    if cfg.init == "random":
        return None
    key = (cfg.name, cfg.init, cfg.weights_from)
    if key not in _decisions:
        _decisions[key] = broadcast(_decide(cfg, preset)) if broadcast is not None else _decide(cfg, preset)
    kind, _, value = _decisions[key].partition(":")
    if kind == "error":
        raise FileNotFoundError(value)
    return value if kind == "source" else None


def _decide(cfg: ModelConfig, preset: ModelPreset) -> str:
    """Probe the source; only an unreachable hub falls back to random weights, and only with init=auto.

    Errors are returned, not raised, so rank 0 can hand them to every rank instead of leaving them waiting.
    """
    source = cfg.weights_from or preset.hub_name
    assert source is not None, "only published presets (with a hub_name) are probed"
    if _has_weights(source):
        return f"source:{source}"
    if cfg.weights_from is not None:
        return f"error:model.weights_from: no HF model (config.json) at {cfg.weights_from!r}"
    if cfg.init == "pretrained":
        return (
            f"error:model.init=pretrained: the weights of {cfg.name!r} ({source}) cannot be had here; set "
            "model.weights_from to a local copy, or model.init=auto to train the architecture from scratch"
        )
    logger.warning(
        "model %s: no pretrained weights reachable at %s; building the same architecture randomly initialised "
        "(vocabulary %d, offline tokenizer)",
        preset.name,
        source,
        T5_VOCAB_SIZE,
    )
    return "random"


def weights_tags(cfg: ModelConfig) -> dict[str, str]:
    """MLflow tags saying whether the run started from pretrained weights, and which."""
    if not is_preset(cfg.name):
        return {"model.weights": "pretrained", "model.weights_source": cfg.name}
    source = pretrained_source(cfg)
    return {"model.weights": "pretrained", "model.weights_source": source} if source else {"model.weights": "random"}
