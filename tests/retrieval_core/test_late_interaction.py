"""MaxSim, the scorer's core: each query token's best passage match, summed; padding never matches."""

import pytest
import torch

from retrieval_core.late_interaction import maxsim


def test_maxsim_sums_each_query_tokens_best_match_and_padding_never_matches() -> None:
    query = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])  # third token is padding
    query_mask = torch.tensor([[1, 1, 0]])
    passages = torch.tensor([[[[1.0, 0.0], [0.5, 0.5], [0.0, 7.0]], [[0.2, 0.9], [0.0, 0.0], [0.0, 0.0]]]])
    passage_mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]])  # the 7.0 token of passage 0 is padding
    scores = maxsim(query, query_mask, passages, passage_mask)
    assert scores[0].tolist() == pytest.approx([1.0 + 0.5, 0.2 + 0.9])
