"""Right-padding of variable-length features into tensors, by the naming convention of their keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.objectives.task import IGNORE_INDEX


def _pad_value(key: str, pad_token_id: int) -> int:
    if key == "labels" or key.endswith("_labels"):
        return IGNORE_INDEX
    if key.endswith("mask"):
        return 0
    return pad_token_id


def pad_batch(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Int lists become right-padded [B, T] tensors (ids: pad id, masks: 0, labels: -100); ints stay 1-D."""
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if isinstance(values[0], list):
            width = max(len(v) for v in values)
            fill = _pad_value(key, pad_token_id)
            batch[key] = torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)
        else:
            batch[key] = torch.tensor(values)
    return batch
