import math

import torch

from trainer.objectives.task import IGNORE_INDEX, token_cross_entropy, weighted_task_mixture


def uniform_logits(batch: int, length: int, vocab: int) -> torch.Tensor:
    return torch.zeros(batch, length, vocab)


def test_token_cross_entropy_ignores_padding() -> None:
    logits = uniform_logits(2, 3, 4)
    labels = torch.tensor([[1, 2, IGNORE_INDEX], [3, IGNORE_INDEX, IGNORE_INDEX]])
    assert math.isclose(token_cross_entropy(logits, labels).item(), math.log(4), rel_tol=1e-6)


def test_mixture_averages_each_task_over_its_own_tokens() -> None:
    # Row 0 (answer task): one confident-correct token. Row 1 (explain task): three uniform tokens.
    logits = uniform_logits(2, 3, 4)
    logits[0, 0, 2] = 100.0
    labels = torch.tensor([[2, IGNORE_INDEX, IGNORE_INDEX], [0, 1, 3]])
    parts = weighted_task_mixture(logits, labels, torch.tensor([0, 1]), {0: 0.3, 1: 0.7})
    assert parts[0].item() < 1e-6
    assert math.isclose(parts[1].item(), 0.7 * math.log(4), rel_tol=1e-6)


def test_mixture_with_a_task_absent_from_the_batch_is_zero() -> None:
    labels = torch.tensor([[1, 2]])
    parts = weighted_task_mixture(uniform_logits(1, 2, 4), labels, torch.tensor([0]), {0: 0.5, 1: 0.5})
    assert parts[1].item() == 0.0
    assert math.isclose(parts[0].item(), 0.5 * math.log(4), rel_tol=1e-6)
