"""The reranker objective on hand-made tensors, and its temperature schedule."""

import math

import pytest
import torch

from trainer.objectives.reranker import (
    RelevanceDistillation,
    cross_entropy_to_best,
    linear_anneal,
    relevance_kl,
)


def test_kl_matches_the_formula_and_vanishes_when_the_model_matches_the_target() -> None:
    rho = torch.tensor([[3.0, 1.0, 0.0]])
    scores = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3, dtype=torch.long)
    p = torch.softmax(rho / 2.0, -1)
    q = torch.softmax(scores / 0.5, -1)
    expected = (p * (p.log() - q.log())).sum()
    assert relevance_kl(scores, rho, mask, tau_target=2.0, tau_model=0.5).item() == pytest.approx(expected.item())
    matching = rho / 2.0 * 0.5  # softmax(matching / 0.5) == softmax(rho / 2)
    assert relevance_kl(matching, rho, mask, 2.0, 0.5).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_candidates_take_no_probability_mass() -> None:
    rho = torch.tensor([[3.0, 1.0, 50.0]])
    scores = torch.tensor([[1.0, 0.0, -50.0]])
    mask = torch.tensor([[1, 1, 0]])
    full = relevance_kl(scores[:, :2], rho[:, :2], torch.ones(1, 2, dtype=torch.long), 1.0, 1.0)
    assert relevance_kl(scores, rho, mask, 1.0, 1.0).item() == pytest.approx(full.item())


def test_cross_entropy_targets_the_best_rationale_candidate() -> None:
    rho = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 9.0]])
    scores = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the masked 9.0 is not the best
    loss = cross_entropy_to_best(scores, rho, mask, tau_model=1.0)
    assert loss.item() == pytest.approx((math.log(3) + math.log(2)) / 2)


def test_temperatures_anneal_linearly_and_stay_positive() -> None:
    objective = RelevanceDistillation("kl", 5.0, 1.0, 1.0, 0.1)
    assert objective.temperatures(0.0) == (5.0, 1.0)
    assert objective.temperatures(0.5) == pytest.approx((3.0, 0.55))
    assert objective.temperatures(1.0) == pytest.approx((1.0, 0.1))
    assert objective.temperatures(7.0) == pytest.approx((1.0, 0.1))  # clamped past the end
    assert all(t > 0 for p in torch.linspace(-1, 2, 31).tolist() for t in objective.temperatures(p))
    assert linear_anneal(2.0, 2.0, 0.3) == 2.0
    parts = objective(torch.zeros(1, 2, requires_grad=True), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), 0.5)
    assert set(parts) == {"loss", "rerank_loss", "tau_target", "tau_model"} and parts["tau_target"].item() == 3.0
    parts["loss"].backward()
