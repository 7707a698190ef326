"""Late-interaction passage scoring (ColBERT's MaxSim) at inference: what reranks passages for KARD's evaluation,
the retrieval service's rerank option and the MLflow pyfunc alike, so a deployed student reads what it was
evaluated with.

s(q, d) = Σ_i max_j <E(q)_i, E(d)_j>, with E = L2-normalised linear projection of the encoder's token states;
padding never matches. Standalone on purpose (torch, transformers and safetensors only, nothing from this
repository): a logged reranker ships this file as an MLflow artifact, so it loads and ranks anywhere.

An exported reranker is a plain HF encoder directory plus the projection and a small config; training
(trainer.models.late_interaction) writes that layout and adds the LoRA adapters, which live only while training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

if TYPE_CHECKING:  # transformers' model classes load ~2 s of modelling code: only when a scorer is built
    from transformers import PreTrainedModel

CONFIG_FILE = "reranker_config.json"
PROJECTION_FILE = "projection.safetensors"


def maxsim(query: Tensor, query_mask: Tensor, passages: Tensor, passage_mask: Tensor) -> Tensor:
    """Scores [B, C] of query token states [B, Lq, D] against C passages' token states [B, C, Lp, D]."""
    similarity = torch.einsum("bqd,bcpd->bcqp", query, passages)
    similarity = similarity.masked_fill(~passage_mask.bool()[:, :, None, :], float("-inf"))
    best = similarity.max(dim=-1).values  # [B, C, Lq]
    best = best.masked_fill(~query_mask.bool()[:, None, :], 0.0)
    return best.sum(dim=-1)


class LateInteractionEncoder(nn.Module):
    """Encoder + projection: token embeddings for MaxSim. Its parameter names (`encoder.*`, `projection.weight`)
    are the exported layout, which the training model extends."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        projection_dim: int,
        max_query_length: int = 64,
        max_passage_length: int = 160,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(encoder.config.hidden_size, projection_dim, bias=False)
        self.max_query_length = max_query_length
        self.max_passage_length = max_passage_length

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.projection(states), dim=-1) * attention_mask.unsqueeze(-1)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LateInteractionEncoder:
        """An exported reranker directory (HF encoder, projection weights, reranker config), in eval mode."""
        directory = Path(directory)
        settings = json.loads((directory / CONFIG_FILE).read_text())
        from transformers import AutoModel

        model = cls(AutoModel.from_pretrained(directory), **settings)
        model.projection.weight.data.copy_(load_file(str(directory / PROJECTION_FILE))["weight"])
        return model.eval()


class LateInteractionScorer:
    """Ranks passages for queries with an exported reranker."""

    def __init__(self, directory: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = LateInteractionEncoder.from_pretrained(directory).to(device)
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
