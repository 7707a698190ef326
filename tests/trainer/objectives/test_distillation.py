import math

import pytest
import torch

from trainer.objectives.distillation import layerwise_alignment, masked_kl, masked_mse


def test_masked_mse_averages_only_masked_positions_and_hidden_dim() -> None:
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # squared errors: position 0 -> 1, 4; position 1 -> 0, 4; position 2 is padding.
    assert masked_mse(student, teacher, mask).item() == pytest.approx((1 + 4 + 0 + 4) / 4)


def test_masked_mse_accepts_bool_mask_over_a_padded_batch() -> None:
    student = torch.tensor([[[2.0], [2.0]], [[1.0], [5.0]]])
    teacher = torch.zeros(2, 2, 1)
    mask = torch.tensor([[True, True], [True, False]])
    assert masked_mse(student, teacher, mask).item() == pytest.approx((4 + 4 + 1) / 3)


def test_masked_mse_empty_mask_is_zero_with_a_grad_path() -> None:
    student = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_mse(student, torch.randn(2, 3, 4), torch.zeros(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and torch.count_nonzero(student.grad) == 0


def test_masked_mse_teacher_gets_no_gradient() -> None:
    student = torch.randn(1, 2, 3, requires_grad=True)
    teacher = torch.randn(1, 2, 3, requires_grad=True)
    masked_mse(student, teacher, torch.ones(1, 2)).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.count_nonzero(student.grad) > 0


def test_masked_mse_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        masked_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match="mask shape"):
        masked_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 3))


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_masked_kl_matches_hand_computed_value_and_ignores_padding() -> None:
    # Position 0: teacher softmax([ln 3, 0]) = [0.75, 0.25]; student uniform [0.5, 0.5].
    # Position 1: identical distributions (KL 0). Position 2: padding with a huge mismatch.
    teacher = torch.tensor([[[math.log(3.0), 0.0], [1.0, 2.0], [50.0, -50.0]]])
    student = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [-50.0, 50.0]]])
    mask = torch.tensor([[1, 1, 0]])
    expected = (_kl([0.75, 0.25], [0.5, 0.5]) + 0.0) / 2
    assert masked_kl(student, teacher, mask).item() == pytest.approx(expected, rel=1e-5)


def test_masked_kl_temperature_softens_and_scales_by_t_squared() -> None:
    # At T=2 the teacher logits [2 ln 3, 0] become [ln 3, 0] -> [0.75, 0.25]; result is scaled by 4.
    teacher = torch.tensor([[[2 * math.log(3.0), 0.0]]])
    student = torch.zeros(1, 1, 2)
    loss = masked_kl(student, teacher, torch.ones(1, 1), temperature=2.0)
    assert loss.item() == pytest.approx(4 * _kl([0.75, 0.25], [0.5, 0.5]), rel=1e-5)


def test_masked_kl_direction_is_teacher_to_student() -> None:
    teacher = torch.tensor([[[math.log(9.0), 0.0]]])  # [0.9, 0.1]
    student = torch.tensor([[[0.0, math.log(4.0)]]])  # [0.2, 0.8]
    loss = masked_kl(student, teacher, torch.ones(1, 1))
    assert loss.item() == pytest.approx(_kl([0.9, 0.1], [0.2, 0.8]), rel=1e-5)
    assert loss.item() != pytest.approx(_kl([0.2, 0.8], [0.9, 0.1]), rel=1e-3)


def test_masked_kl_empty_mask_and_teacher_gradients() -> None:
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5, requires_grad=True)
    empty = masked_kl(student, teacher, torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0
    masked_kl(student, teacher, torch.ones(2, 3)).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.count_nonzero(student.grad) > 0


def test_masked_kl_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        masked_kl(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1), temperature=0.0)


def test_layerwise_alignment_means_selected_layers_with_negative_indices() -> None:
    mask = torch.tensor([[1, 0]])
    student = [torch.full((1, 2, 1), float(v)) for v in (0.0, 1.0, 2.0)]
    teacher = [torch.zeros(1, 2, 1) for _ in range(3)]
    # layer 1 -> 1^2 = 1, layer -1 (= 2) -> 2^2 = 4.
    assert layerwise_alignment(student, teacher, mask, [1, -1]).item() == pytest.approx(2.5)
    assert layerwise_alignment(student, teacher, mask, [-3]).item() == pytest.approx(0.0)


def test_layerwise_alignment_names_the_bad_layer_index() -> None:
    states = [torch.zeros(1, 2, 1) for _ in range(3)]
    with pytest.raises(ValueError, match="layer index 3 "):
        layerwise_alignment(states, states, torch.ones(1, 2), [0, 3])
    with pytest.raises(ValueError, match="layer index -4 "):
        layerwise_alignment(states, states, torch.ones(1, 2), [-4])
    with pytest.raises(ValueError, match="at least one"):
        layerwise_alignment(states, states, torch.ones(1, 2), [])


def test_layerwise_alignment_projects_only_the_chosen_student_states() -> None:
    student = [torch.full((1, 2, 2), 9.0), torch.ones(1, 2, 2)]  # the first state would fail to project (unused)
    teacher = [torch.zeros(1, 2, 4), torch.full((1, 2, 4), 2.0)]
    seen = []

    def widen(state: torch.Tensor) -> torch.Tensor:
        seen.append(state)
        return torch.cat([state, state], dim=-1)

    loss = layerwise_alignment(student, teacher, torch.ones(1, 2), [-1], project=widen)
    assert loss.item() == pytest.approx(1.0) and len(seen) == 1 and seen[0] is student[1]
    with pytest.raises(ValueError, match="shapes differ"):
        layerwise_alignment(student, teacher, torch.ones(1, 2), [-1])


def test_bf16_states_give_a_float32_loss_exact_to_float32_rounding() -> None:
    """Under ds.precision=bf16 the hidden states and logits are bf16; the losses must not round to bf16."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 64).bfloat16(), torch.randn(2, 5, 64).bfloat16()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    weights = mask.double()
    mse_ref = ((student.double() - teacher.double()).pow(2).mean(-1) * weights).sum() / weights.sum()
    mse = masked_mse(student, teacher, mask)
    assert mse.dtype == torch.float32
    assert mse.item() == pytest.approx(mse_ref.item(), rel=1e-6)

    kl = masked_kl(student, teacher, mask, temperature=2.0)
    log_p_s = torch.log_softmax(student.double() / 2, -1)
    log_p_t = torch.log_softmax(teacher.double() / 2, -1)
    kl_ref = 4 * ((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * weights).sum() / weights.sum()
    assert kl.dtype == torch.float32
    assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-5)
