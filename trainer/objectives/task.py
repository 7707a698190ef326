"""Task losses on decoder logits: what every method optimises for its target text."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored label positions ([B, L, V] vs [B, L])."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def weighted_task_mixture(
    logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, weights: dict[int, float]
) -> dict[int, torch.Tensor]:
    """Token-mean cross-entropy per task in a mixed batch, scaled by its weight.

    Step-by-step multitask puts answer and explanation examples in one batch; each task's loss
    is averaged over its own tokens so a long rationale does not drown the short answer.
    """
    per_token = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(labels)
    valid = labels != IGNORE_INDEX
    losses: dict[int, torch.Tensor] = {}
    for task, weight in weights.items():
        mask = valid & (task_ids == task).unsqueeze(1)
        total = mask.sum()
        losses[task] = weight * (per_token * mask).sum() / total.clamp(min=1)
    return losses
