"""Dev accuracy by generation, sharded over ranks and gathered, with the raw predictions kept."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from trainer.data.example import QAExample
from trainer.methods.base import Method


@dataclass(frozen=True)
class Prediction:
    id: str
    generated: str
    predicted_index: int | None
    gold_index: int

    @property
    def correct(self) -> bool:
        return self.predicted_index == self.gold_index


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    unparsed_rate: float
    predictions: list[Prediction]

    def metrics(self, prefix: str = "dev") -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/unparsed_rate": self.unparsed_rate,
            f"{prefix}/num_examples": float(len(self.predictions)),
        }


@torch.no_grad()
def generate_predictions(
    method: Method,
    model: torch.nn.Module,
    examples: list[QAExample],
    batch_size: int,
    device: torch.device,
    generation_kwargs: dict[str, Any],
) -> list[Prediction]:
    """Greedy/beam answers for examples, in order, on this process only."""
    predictions: list[Prediction] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = method.collate([method.eval_features(ex) for ex in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        output = method.generate(model, batch, max_new_tokens=method.max_new_tokens(), **generation_kwargs)
        texts = method.tokenizer.batch_decode(output, skip_special_tokens=True)
        predictions.extend(
            Prediction(ex.id, text, method.parse(text, ex), ex.answer_index)
            for ex, text in zip(chunk, texts, strict=True)
        )
    return predictions


def evaluate(
    method: Method,
    model: torch.nn.Module,
    examples: list[QAExample],
    strategy: Any,
    batch_size: int,
    generation_kwargs: dict[str, Any],
) -> EvalResult:
    """Each rank answers a strided shard; all ranks run the same number of batches (ZeRO-3 generation
    is a collective), short shards padded with a repeat that is dropped when gathering."""
    was_training = model.training
    model.eval()
    world, rank = strategy.world_size, strategy.rank
    shard = examples[rank::world]
    per_rank = math.ceil(len(examples) / world)
    padded = shard + [examples[0]] * (per_rank - len(shard))
    local = generate_predictions(method, model, padded, batch_size, strategy.device, generation_kwargs)[: len(shard)]
    model.train(was_training)
    by_id = {p.id: p for part in strategy.all_gather_objects(local) for p in part}
    predictions = [by_id[ex.id] for ex in examples]
    correct = sum(p.correct for p in predictions)
    unparsed = sum(p.predicted_index is None for p in predictions)
    return EvalResult(correct / len(predictions), unparsed / len(predictions), predictions)
