"""Knowledge-distillation losses for KNIFE: align student states/logits with a frozen teacher's.

Every loss averages over real (masked-in) positions only, so padding and batch composition do not change
the scale, and detaches the teacher so no gradient ever reaches it through these terms. Losses are computed and
returned in float32 whatever the states' dtype: a bf16 loss would keep 8 bits of mantissa (0.4% error) on its
way into the total loss, beside a float32 task cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _position_weights(mask: Tensor, like: Tensor) -> Tensor:
    """Mask [B, T] as float32 weights on `like`'s device (accepts bool or 0/1)."""
    if mask.dim() != 2 or tuple(mask.shape) != tuple(like.shape[:2]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match [B, T] = {tuple(like.shape[:2])}")
    return mask.to(device=like.device, dtype=torch.float32)


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked positions and hidden dim; 0 (still differentiable) for an empty mask."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    weights = _position_weights(mask, student)
    squared = (student.float() - teacher.detach().float()).pow(2).mean(dim=-1)
    return (squared * weights).sum() / weights.sum().clamp_min(1.0)


def masked_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) over the vocab per position, averaged over masked positions, times T^2.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    weights = _position_weights(mask, student_logits)
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_position = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    loss = (per_position * weights).sum() / weights.sum().clamp_min(1.0)
    return loss * temperature**2


def _resolve_layer(index: int, num_layers: int, side: str) -> int:
    if not -num_layers <= index < num_layers:
        raise ValueError(f"layer index {index} is out of range for {num_layers} {side} hidden states")
    return index % num_layers


def layerwise_alignment(
    student_states: Sequence[Tensor],
    teacher_states: Sequence[Tensor],
    mask: Tensor,
    layers: Sequence[int],
    project: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Mean masked MSE over the chosen layers; negative indices count from each side's last state.

    `project` maps each chosen student state into the teacher's space first (a learned map to a wider teacher).
    """
    if not layers:
        raise ValueError("layers must name at least one hidden-state index")
    losses = []
    for layer in layers:
        student = student_states[_resolve_layer(layer, len(student_states), "student")]
        teacher = teacher_states[_resolve_layer(layer, len(teacher_states), "teacher")]
        losses.append(masked_mse(project(student) if project is not None else student, teacher, mask))
    return torch.stack(losses).mean()
