"""Choice scoring on a model whose likelihoods are known by construction, and on a real tiny T5."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from trainer.evaluation.choice_scoring import build_scoring_rows, score_choices

VOCAB = 6


class KnownLikelihoods(nn.Module):
    """A decoder stand-in: the next-token distribution depends only on the example (read off its encoder state)
    and the position, through a fixed table, so every choice's log-likelihood can be worked out by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # [examples, positions, VOCAB] probabilities

    def forward(self, encoder_outputs, attention_mask, labels, return_dict=True):
        example = encoder_outputs.last_hidden_state[:, 0, 0].long()
        return SimpleNamespace(logits=self.table[example, : labels.shape[1]].log())


def distribution(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float)


def test_scores_are_mean_and_sum_log_probabilities_of_the_scored_tokens() -> None:
    # Example 0: position 0 prefers token 2, position 1 token 5 (EOS stand-in), position 2 token 5.
    table = torch.stack(
        [
            distribution(
                [0.1, 0.1, 0.5, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]
            ),
            distribution(
                [0.2, 0.2, 0.2, 0.2, 0.1, 0.1], [0.1, 0.6, 0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.1, 0.5, 0.1, 0.1]
            ),
        ]
    )
    model = KnownLikelihoods(table)
    hidden = torch.tensor([0.0, 1.0]).view(2, 1, 1).expand(2, 3, 4).contiguous()
    encoder_outputs = BaseModelOutput(last_hidden_state=hidden)
    mask = torch.ones(2, 3, dtype=torch.long)
    eos = 5
    # Example 0 has no prefix: choices [2, eos] and [3, 4, eos]. Example 1 has prefix [0]: choices [1, eos], [3].
    scores = score_choices(model, encoder_outputs, mask, [[], [0]], [[[2, eos], [3, 4, eos]], [[1, eos], [3]]])
    expected_sums = [
        [math.log(0.5) + math.log(0.4), math.log(0.1) + math.log(0.2) + math.log(0.5)],
        [math.log(0.6) + math.log(0.1), math.log(0.1)],  # position 0 (the prefix) is never scored
    ]
    for got, want in zip(scores.sum_logprob, expected_sums, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    assert scores.mean_logprob[0] == pytest.approx([expected_sums[0][0] / 2, expected_sums[0][1] / 3], rel=1e-6)
    assert scores.mean_logprob[1] == pytest.approx([expected_sums[1][0] / 2, expected_sums[1][1]], rel=1e-6)
    assert scores.best() == [0, 0]


def test_length_normalisation_prefers_the_likelier_tokens_not_the_shorter_choice() -> None:
    table = distribution([0.3, 0.0, 0.7, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.9, 0.1], [0.0] * 5 + [1.0])
    model = KnownLikelihoods(table.clamp(min=1e-9).unsqueeze(0))
    encoder_outputs = BaseModelOutput(last_hidden_state=torch.zeros(1, 2, 4))
    short, long = [0, 5], [2, 4, 5]  # sums: log .3 + log 1e-9  vs  log .7 + log .9 + log 1
    scores = score_choices(model, encoder_outputs, torch.ones(1, 2, dtype=torch.long), [[]], [[short, long]])
    assert scores.best() == [1]


def test_rows_pad_right_and_score_only_after_the_prefix() -> None:
    rows = build_scoring_rows([[7, 8], []], [[[1], [2, 3]], [[4, 5, 6]]])
    assert rows.example_index.tolist() == [0, 0, 1]
    assert rows.labels.tolist() == [[7, 8, 1, -100], [7, 8, 2, 3], [4, 5, 6, -100]]
    assert rows.scored.tolist() == [
        [False, False, True, False],
        [False, False, True, True],
        [True, True, True, False],
    ]
    with pytest.raises(ValueError, match="no choices"):
        build_scoring_rows([[]], [[]])


def test_real_t5_scores_equal_separate_teacher_forced_passes() -> None:
    """Shared encoder states, padded rows and one batched decoder call give what one pass per choice gives."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=40,
        d_model=16,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=2,
        num_heads=2,
        d_kv=8,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config).eval()
    input_ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    attention_mask = (input_ids != 0).long()
    encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    prefixes = [[11, 12], [13]]
    choices = [[[20, 1], [21, 22, 1]], [[23, 1], [24, 1], [25, 26, 27, 1]]]
    scores = score_choices(model, encoder_outputs, attention_mask, prefixes, choices)
    for i, (prefix, options) in enumerate(zip(prefixes, choices, strict=True)):
        for j, option in enumerate(options):
            labels = torch.tensor([prefix + option])
            logits = model(
                input_ids=input_ids[i : i + 1], attention_mask=attention_mask[i : i + 1], labels=labels
            ).logits
            logprobs = logits[0].log_softmax(-1).gather(-1, labels[0].unsqueeze(-1)).squeeze(-1)[len(prefix) :]
            assert scores.sum_logprob[i][j] == pytest.approx(logprobs.sum().item(), abs=1e-5)
            assert scores.mean_logprob[i][j] == pytest.approx(logprobs.mean().item(), abs=1e-5)
