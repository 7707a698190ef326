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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainer.config.schema import ModelConfig
from trainer.models.architecture import T5_VOCAB_SIZE, T5Architecture

logger = logging.getLogger(__name__)

# ModelConfig.tokenizer_vocab_size's default: the offline shapes' vocabulary until a run's tokenizer sizes it.
OFFLINE_VOCAB_SIZE = 4000
# What `check_shape` compares: the layers. The vocabulary may be resized and dropout retuned by a fine-tune, and
# transformers 5 rewrites tie_word_embeddings on load (the checkpoint decides it).
LAYER_FIELDS = ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "feed_forward_proj")


@dataclass(frozen=True)
class ModelPreset:
    """A named architecture; `hub_name` is where its published weights live (None: an offline-only shape)."""

    name: str
    architecture: T5Architecture
    hub_name: str | None = None

    @property
    def published(self) -> bool:
        return self.hub_name is not None

    def architecture_for(self, tokenizer_size: int) -> T5Architecture:
        """Published shapes keep their real embedding (memory and speed are the real ones; the offline tokenizer's
        ids are a subset of its rows); offline shapes take the tokenizer's size."""
        if self.published:
            return self.architecture
        return replace(self.architecture, vocab_size=tokenizer_size)


def _original(d_model: int, d_ff: int, layers: int, heads: int, d_kv: int) -> T5Architecture:
    """Raffel et al. 2020: ReLU feed-forward, input and output embeddings shared."""
    return T5Architecture(d_model, d_ff, layers, layers, heads, d_kv, "relu", True)


def _v1_1(d_model: int, d_ff: int, layers: int, heads: int) -> T5Architecture:
    """T5 v1.1 (and Flan-T5, fine-tuned from it): gated-GELU feed-forward, untied output layer, d_kv 64."""
    return T5Architecture(d_model, d_ff, layers, layers, heads, 64, "gated-gelu", False)


def _offline(d_model: int, d_ff: int, layers: int, heads: int, d_kv: int) -> T5Architecture:
    """Tiny shapes (CPU minutes): the vocabulary is the offline tokenizer's, no dropout."""
    return T5Architecture(
        d_model, d_ff, layers, layers, heads, d_kv, "gated-gelu", True, vocab_size=OFFLINE_VOCAB_SIZE, dropout_rate=0.0
    )


_V1_1_SHAPES = {
    "small": _v1_1(512, 1024, 8, 6),
    "base": _v1_1(768, 2048, 12, 12),
    "large": _v1_1(1024, 2816, 24, 16),
    "xl": _v1_1(2048, 5120, 24, 32),
}

PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in [
        ModelPreset("t5-tiny", _offline(64, 256, 2, 4, 16)),
        ModelPreset("t5-mini", _offline(128, 512, 4, 4, 32)),
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
    for key in LAYER_FIELDS:
        expected = getattr(preset.architecture, key)
        found = getattr(config, key, None)
        if found != expected:
            raise ValueError(
                f"model.weights_from: {config.name_or_path} has {key}={found!r}, but {preset.name} has {expected!r}"
            )


def hub_offline() -> bool:
    """huggingface_hub's and transformers' offline switches: with either set, nothing is downloaded."""
    flags = (os.environ.get(k, "").lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes") for flag in flags)


def hub_endpoint() -> str:
    """The model hub's address: HF_ENDPOINT (a mirror) or huggingface.co."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT)


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """One TCP connect to the hub: an unreachable hub otherwise costs ~30 s of client retries."""
    url = urlparse(hub_endpoint())
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
        if not local_only and (hub_offline() or not hub_reachable()):
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
