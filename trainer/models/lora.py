"""Low-rank adapters (Hu et al. 2021) on chosen linear layers: the base weight stays frozen, a rank-r update
B·A·(alpha/r) is learned. Exported models have the update merged in (see late_interaction.merge_lora)."""

from __future__ import annotations

import math

import torch
from torch import nn

LORA_A, LORA_B = "lora_a", "lora_b"


class LoRALinear(nn.Module):
    """`base(x) + (x Aᵀ Bᵀ)·scale`; B starts at zero, so training starts from the pretrained function."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """Wrap every nn.Linear whose attribute name is in `targets` (BERT: "query", "value"); returns their paths."""
    wrapped = []
    for path, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{path}.{name}" if path else name)
    if not wrapped:
        raise ValueError(f"no linear layer named {targets} to put LoRA adapters on")
    return wrapped
