"""KARD's trainable late-interaction reranker: the inference encoder (retrieval_core.late_interaction) plus the
training forward over each example's candidates and the export.

LoRA adapters (trainer.models.lora) live only during training: save_pretrained merges them into the encoder
weights, so an exported reranker is a plain HF encoder directory plus the projection and a small config, which
retrieval_core.late_interaction.LateInteractionScorer loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file
from torch import Tensor

from retrieval_core.late_interaction import CONFIG_FILE, PROJECTION_FILE, LateInteractionEncoder, maxsim

if TYPE_CHECKING:  # transformers' model classes load ~2 s of modelling code: only when a reranker is built
    from transformers import PreTrainedModel

LORA_SUFFIXES = (".base.weight", ".base.bias", ".lora_a", ".lora_b")


def merge_lora(state_dict: dict[str, Tensor], scale: float | None) -> dict[str, Tensor]:
    """Fold `x.base.weight + (x.lora_b @ x.lora_a)·scale` into `x.weight`: the plain architecture's keys."""
    merged: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".lora_a") or key.endswith(".lora_b"):
            continue
        if key.endswith(".base.weight"):
            prefix = key.removesuffix(".base.weight")
            update = state_dict[f"{prefix}.lora_b"].float() @ state_dict[f"{prefix}.lora_a"].float()
            merged[f"{prefix}.weight"] = (value.float() + update * float(scale or 1.0)).to(value.dtype)
        elif key.endswith(".base.bias"):
            merged[f"{key.removesuffix('.base.bias')}.bias"] = value
        else:
            merged[key] = value
    return merged


class LateInteractionReranker(LateInteractionEncoder):
    """Encoder + projection; `forward` scores each example's candidate passages against its query."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        projection_dim: int,
        max_query_length: int = 64,
        max_passage_length: int = 160,
        lora_scale: float | None = None,
    ) -> None:
        super().__init__(encoder, projection_dim, max_query_length, max_passage_length)
        self.config = encoder.config  # DeepSpeed and transformers look for a config on the module
        self.lora_scale = lora_scale

    def forward(
        self,
        query_input_ids: Tensor,
        query_attention_mask: Tensor,
        passage_input_ids: Tensor,
        passage_attention_mask: Tensor,
    ) -> Tensor:
        batch, candidates, length = passage_input_ids.shape
        query = self.embed(query_input_ids, query_attention_mask)
        passages = self.embed(passage_input_ids.view(-1, length), passage_attention_mask.view(-1, length))
        passages = passages.view(batch, candidates, length, -1)
        return maxsim(query, query_attention_mask, passages, passage_attention_mask)

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """An HF encoder dir (LoRA merged) + projection weights + reranker config; `state_dict` may be a ZeRO-3
        consolidated one, in which case this process's own (partitioned) parameters are never read."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        full = merge_lora(state_dict if state_dict is not None else self.state_dict(), self.lora_scale)
        encoder_state = {k.removeprefix("encoder."): v for k, v in full.items() if k.startswith("encoder.")}
        self.encoder.save_pretrained(directory, state_dict=encoder_state)
        save_file({"weight": full["projection.weight"].contiguous()}, str(directory / PROJECTION_FILE))
        (directory / CONFIG_FILE).write_text(
            json.dumps(
                {
                    "projection_dim": self.projection.out_features,
                    "max_query_length": self.max_query_length,
                    "max_passage_length": self.max_passage_length,
                },
                indent=2,
            )
        )
