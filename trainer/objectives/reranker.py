"""KARD's reranker objective: reproduce rationale relevance from the question alone.

target = softmax(rho / tau_target), rho = BM25(rationale, candidate); model = softmax(s(question, candidate) /
tau_model); loss = KL(target ‖ model) (the paper's Eq. 3), or cross-entropy to the candidate the rationale ranks
best. Both temperatures anneal linearly from their start to their end value over training and stay positive
(the public code's schedule drives them below zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_anneal(start: float, end: float, progress: float) -> float:
    """start at progress 0, end at 1 (clamped); positive whenever both ends are."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


def _masked(logits: Tensor, mask: Tensor) -> Tensor:
    return logits.masked_fill(~mask.bool(), float("-inf"))


def relevance_kl(scores: Tensor, rho: Tensor, mask: Tensor, tau_target: float, tau_model: float) -> Tensor:
    """Mean over examples of KL(softmax(rho/tau_target) ‖ softmax(scores/tau_model)) on the unmasked candidates."""
    target = F.softmax(_masked(rho.float() / tau_target, mask), dim=-1)
    log_model = F.log_softmax(_masked(scores.float() / tau_model, mask), dim=-1)
    log_target = torch.log(target.clamp(min=1e-12))
    per_candidate = torch.where(mask.bool(), target * (log_target - log_model), torch.zeros_like(target))
    return per_candidate.sum(dim=-1).mean()


def cross_entropy_to_best(scores: Tensor, rho: Tensor, mask: Tensor, tau_model: float) -> Tensor:
    """Hard-label alternative: the candidate with the highest rho is the positive."""
    best = _masked(rho.float(), mask).argmax(dim=-1)
    return F.cross_entropy(_masked(scores.float() / tau_model, mask), best)


@dataclass(frozen=True)
class RelevanceDistillation:
    loss: Literal["kl", "ce_best"]
    tau_target_start: float
    tau_target_end: float
    tau_model_start: float
    tau_model_end: float

    def temperatures(self, progress: float) -> tuple[float, float]:
        return (
            linear_anneal(self.tau_target_start, self.tau_target_end, progress),
            linear_anneal(self.tau_model_start, self.tau_model_end, progress),
        )

    def __call__(self, scores: Tensor, rho: Tensor, mask: Tensor, progress: float) -> dict[str, Tensor]:
        tau_target, tau_model = self.temperatures(progress)
        if self.loss == "kl":
            loss = relevance_kl(scores, rho, mask, tau_target, tau_model)
        else:
            loss = cross_entropy_to_best(scores, rho, mask, tau_model)
        return {
            "loss": loss,
            "rerank_loss": loss.detach(),
            "tau_target": scores.new_tensor(tau_target),
            "tau_model": scores.new_tensor(tau_model),
        }
