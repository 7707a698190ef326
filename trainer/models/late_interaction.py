"""Late-interaction passage scoring (ColBERT's MaxSim) over one shared pretrained encoder: KARD's reranker.

s(q, d) = Σ_i max_j <E(q)_i, E(d)_j>, with E = L2-normalised linear projection of the encoder's token states;
padding never matches. Standalone on purpose (torch, transformers and safetensors only): a logged reranker ships
this file as an MLflow artifact, so it loads and ranks without this repository.

LoRA adapters (trainer.models.lora) live only during training: save_pretrained merges them into the encoder
weights, so an exported reranker is a plain HF encoder directory plus the projection and a small config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

if TYPE_CHECKING:  # transformers' model classes (a scan of its model packages, ~2 s of modelling code) load with one
    from transformers import PreTrainedModel

CONFIG_FILE = "reranker_config.json"
PROJECTION_FILE = "projection.safetensors"
LORA_SUFFIXES = (".base.weight", ".base.bias", ".lora_a", ".lora_b")


def maxsim(query: Tensor, query_mask: Tensor, passages: Tensor, passage_mask: Tensor) -> Tensor:
    """Scores [B, C] of query token states [B, Lq, D] against C passages' token states [B, C, Lp, D]."""
    similarity = torch.einsum("bqd,bcpd->bcqp", query, passages)
    similarity = similarity.masked_fill(~passage_mask.bool()[:, :, None, :], float("-inf"))
    best = similarity.max(dim=-1).values  # [B, C, Lq]
    best = best.masked_fill(~query_mask.bool()[:, None, :], 0.0)
    return best.sum(dim=-1)


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


class LateInteractionReranker(nn.Module):
    """Encoder + projection; `forward` scores each example's candidate passages against its query."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        projection_dim: int,
        max_query_length: int = 64,
        max_passage_length: int = 160,
        lora_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # DeepSpeed and transformers look for a config on the module
        self.projection = nn.Linear(encoder.config.hidden_size, projection_dim, bias=False)
        self.max_query_length = max_query_length
        self.max_passage_length = max_passage_length
        self.lora_scale = lora_scale

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.projection(states), dim=-1) * attention_mask.unsqueeze(-1)

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

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LateInteractionReranker:
        from transformers import AutoModel

        directory = Path(directory)
        settings = json.loads((directory / CONFIG_FILE).read_text())
        model = cls(AutoModel.from_pretrained(directory), **settings)
        model.projection.weight.data.copy_(load_file(str(directory / PROJECTION_FILE))["weight"])
        return model.eval()


class LateInteractionScorer:
    """Ranks passages for queries with an exported reranker: what KARD's evaluation, the retrieval service's
    rerank option and the MLflow pyfunc all call, so a deployed student reads the passages it was evaluated with."""

    def __init__(self, directory: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = LateInteractionReranker.from_pretrained(directory).to(device)
        self.device = device
        self.batch_size = batch_size

    def _encode(self, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """MaxSim score of each passage for the query, in the passages' order."""
        if not passages:
            return []
        q = self._encode([query], self.model.max_query_length)
        query_states = self.model.embed(q["input_ids"], q["attention_mask"])
        scores: list[float] = []
        for start in range(0, len(passages), self.batch_size):
            p = self._encode(passages[start : start + self.batch_size], self.model.max_passage_length)
            states = self.model.embed(p["input_ids"], p["attention_mask"]).unsqueeze(0)
            scores += maxsim(query_states, q["attention_mask"], states, p["attention_mask"].unsqueeze(0))[0].tolist()
        return scores

    def rerank(self, query: str, passages: Sequence[str], k: int) -> list[int]:
        """Indices of the k best passages, best first (ties keep the input order, i.e. BM25's)."""
        scores = self.score(query, passages)
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def passage_text(title: str, text: str) -> str:
    """How a passage reads to the reranker, in training and at inference alike."""
    return f"{title}. {text}" if title else text
