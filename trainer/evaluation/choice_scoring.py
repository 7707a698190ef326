"""Multiple-choice scoring by decoder likelihood: rank each choice by how likely the model is to write it.

Each (example, choice) pair becomes one decoder row `prefix + choice + terminator`, teacher-forced against the
example's encoder states, which are computed once per example and shared by its choices. Only the choice and
terminator tokens are scored: the prefix is whatever the method writes before its answer (nothing for I→O, the
generated rationale and "answer:" for I→RO and KARD), and the terminator is what its target puts after the
answer (EOS, or I→OR's "explanation:"), so a choice that is a prefix of another ("no" vs "no way") is told apart.

Normalisation: the mean log-probability per scored token (choice tokens plus terminator), so long options are
not penalised for their length. The sum is returned too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from trainer.objectives.task import IGNORE_INDEX


@dataclass(frozen=True)
class ChoiceScores:
    """Per example, one value per choice, in the example's choice order."""

    mean_logprob: list[list[float]]
    sum_logprob: list[list[float]]

    def best(self) -> list[int]:
        return [max(range(len(row)), key=row.__getitem__) for row in self.mean_logprob]


@dataclass(frozen=True)
class ScoringRows:
    """The decoder rows of a batch: which example each row reads, its labels, and which labels are scored."""

    example_index: Tensor  # [R]
    labels: Tensor  # [R, L]; IGNORE_INDEX on right padding
    scored: Tensor  # [R, L] bool; the choice + terminator positions
    choices_per_example: list[int]


def build_scoring_rows(prefixes: list[list[int]], choices: list[list[list[int]]]) -> ScoringRows:
    """One row per (example, choice): prefix ids, then the choice's ids (terminator included), right-padded."""
    if len(prefixes) != len(choices):
        raise ValueError(f"{len(prefixes)} prefixes for {len(choices)} examples")
    rows: list[tuple[int, list[int], int]] = []
    for index, (prefix, options) in enumerate(zip(prefixes, choices, strict=True)):
        if not options:
            raise ValueError(f"example {index} has no choices to score")
        for option in options:
            if not option:
                raise ValueError(f"example {index} has an empty choice continuation")
            rows.append((index, prefix + option, len(prefix)))
    width = max(len(ids) for _, ids, _ in rows)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (_, ids, start) in enumerate(rows):
        labels[row, : len(ids)] = torch.tensor(ids)
        scored[row, start : len(ids)] = True
    return ScoringRows(
        example_index=torch.tensor([index for index, _, _ in rows]),
        labels=labels,
        scored=scored,
        choices_per_example=[len(options) for options in choices],
    )


def row_log_likelihoods(logits: Tensor, rows: ScoringRows) -> tuple[Tensor, Tensor]:
    """Sum and mean of the scored tokens' log-probabilities per row (log-softmax only where scored)."""
    labels, scored = rows.labels.to(logits.device), rows.scored.to(logits.device)
    picked = logits[scored].float().log_softmax(-1)  # [N_scored, V]
    token_logprob = picked.gather(-1, labels[scored].unsqueeze(-1)).squeeze(-1)
    row_of_token = torch.arange(labels.shape[0], device=logits.device).unsqueeze(1).expand_as(labels)[scored]
    sums = torch.zeros(labels.shape[0], device=logits.device).index_add_(0, row_of_token, token_logprob)
    counts = scored.sum(1)
    return sums, sums / counts


@torch.no_grad()
def score_choices(
    model: nn.Module,
    encoder_outputs: BaseModelOutput,
    cross_attention_mask: Tensor,
    prefixes: list[list[int]],
    choices: list[list[list[int]]],
) -> ChoiceScores:
    """Score every choice of every example in one decoder pass over the batch's precomputed encoder states.

    One forward call per batch whatever the number of choices, so ranks running ZeRO-3 stay in lock-step.
    """
    rows = build_scoring_rows(prefixes, choices)
    device = cross_attention_mask.device
    index = rows.example_index.to(device)
    states = encoder_outputs.last_hidden_state
    assert states is not None, "the encoder pass returns its last hidden state"
    expanded = BaseModelOutput(last_hidden_state=states.index_select(0, index))
    labels = rows.labels.to(device)
    logits = model(
        encoder_outputs=expanded,
        attention_mask=cross_attention_mask.index_select(0, index),
        labels=labels,
        return_dict=True,
    ).logits
    sums, means = row_log_likelihoods(logits, rows)
    mean_rows: list[list[float]] = []
    sum_rows: list[list[float]] = []
    start = 0
    for count in rows.choices_per_example:
        mean_rows.append(means[start : start + count].tolist())
        sum_rows.append(sums[start : start + count].tolist())
        start += count
    return ChoiceScores(mean_rows, sum_rows)
