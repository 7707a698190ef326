"""Dev evaluation of seq2seq students: choice scoring (the reported accuracy), greedy generation parsed into a
choice (a second view), and optionally self-consistency over sampled outputs, sharded over ranks and gathered.
A method takes part by implementing trainer.evaluation.protocols.AnswerScoringTask."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from trainer.data.example import QAExample
from trainer.evaluation.choice_scoring import score_choices
from trainer.evaluation.protocols import AnswerScoringTask
from trainer.evaluation.sharding import shard_and_gather
from trainer.evaluation.voting import majority_vote
from trainer.strategy.protocols import DistributedContext

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass(frozen=True)
class EvalSettings:
    """How dev answers are produced; `vote_samples` > 0 adds sampled outputs and a majority vote."""

    batch_size: int = 32
    num_beams: int = 1
    vote_samples: int = 0
    sample_top_k: int = 50
    sample_top_p: float = 0.95
    seed: int = 0
    progress: bool = False  # a tqdm bar on this rank's shard (rank 0; shown only on a terminal)


@dataclass(frozen=True)
class Prediction:
    id: str
    gold_index: int
    predicted_index: int  # argmax of the choice scores: what dev/accuracy counts
    choice_scores: list[float]  # mean log-probability per scored token, one per choice
    generated: str  # greedy output
    generated_index: int | None  # the greedy output parsed by the method; None if it names no choice
    samples: list[str] = field(default_factory=list)
    sample_indices: list[int | None] = field(default_factory=list)
    vote_index: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # method-specific context, e.g. KARD's passages

    @property
    def correct(self) -> bool:
        return self.predicted_index == self.gold_index


@dataclass(frozen=True)
class EvalResult:
    predictions: list[Prediction]
    voted: bool = False
    extra_metrics: dict[str, float] = field(default_factory=dict)  # method-specific, e.g. KARD's retrieval recall

    def _share(self, hits: int) -> float:
        return hits / len(self.predictions)

    @property
    def accuracy(self) -> float:
        return self._share(sum(p.correct for p in self.predictions))

    selection_metric = "accuracy"  # what model selection (run.eval_every) maximises

    @property
    def selection_score(self) -> float:
        return self.accuracy

    def records(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.predictions]

    def table_rows(self) -> list[dict[str, Any]]:
        """One flat row per question for MLflow's table view (lists and dicts as JSON text)."""
        return [
            {
                key: json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value
                for key, value in {**asdict(p), "correct": p.correct}.items()
            }
            for p in self.predictions
        ]

    def metrics(self, prefix: str = "dev") -> dict[str, float]:
        values = {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/generation_accuracy": self._share(
                sum(p.generated_index == p.gold_index for p in self.predictions)
            ),
            f"{prefix}/unparsed_rate": self._share(sum(p.generated_index is None for p in self.predictions)),
            f"{prefix}/num_examples": float(len(self.predictions)),
        }
        if self.voted:
            values[f"{prefix}/vote_accuracy"] = self._share(sum(p.vote_index == p.gold_index for p in self.predictions))
        return {**values, **{f"{prefix}/{k}": v for k, v in self.extra_metrics.items()}}


def _fresh(encoder_outputs: BaseModelOutput) -> BaseModelOutput:
    """generate() expands encoder outputs in place for beams and samples; give it its own wrapper."""
    return BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state)


def _generate(model: nn.Module, **kwargs: Any) -> Tensor:
    """HF's `generate`; torch types a Module's attributes as tensors or modules, so name what it is."""
    generate = cast(Callable[..., Tensor], model.generate)
    return generate(**kwargs)


def _decode(method: AnswerScoringTask, output: Tensor) -> list[str]:
    return method.tokenizer.batch_decode(output, skip_special_tokens=True)


def _chunks(examples: list[QAExample], size: int) -> Iterator[list[QAExample]]:
    for start in range(0, len(examples), size):
        yield examples[start : start + size]


@torch.no_grad()
def predict_batch(
    method: AnswerScoringTask,
    model: nn.Module,
    examples: list[QAExample],
    device: torch.device,
    settings: EvalSettings,
    generation_kwargs: dict[str, Any],
) -> list[Prediction]:
    """Encode once; greedy-generate, score every choice after the method's answer prefix, optionally sample."""
    batch = method.collate([method.eval_features(ex) for ex in examples])
    batch = {k: v.to(device) for k, v in batch.items()}
    encoder_outputs, cross_mask = method.encoder_pass(model, batch)
    budget = {"max_new_tokens": method.max_new_tokens(), **generation_kwargs}
    greedy = _decode(
        method,
        _generate(
            model,
            encoder_outputs=_fresh(encoder_outputs),
            attention_mask=cross_mask,
            do_sample=False,
            num_beams=settings.num_beams,
            **budget,
        ),
    )
    prefixes = [method.encode_plain(method.scoring_prefix(text)) for text in greedy]
    scores = score_choices(
        model, encoder_outputs, cross_mask, prefixes, [method.choice_continuations(ex) for ex in examples]
    )
    samples: list[list[str]] = [[] for _ in examples]
    if settings.vote_samples:
        sampled = _decode(
            method,
            _generate(
                model,
                encoder_outputs=_fresh(encoder_outputs),
                attention_mask=cross_mask,
                do_sample=True,
                top_k=settings.sample_top_k,
                top_p=settings.sample_top_p,
                num_return_sequences=settings.vote_samples,
                **budget,
            ),
        )
        n = settings.vote_samples
        samples = [sampled[i * n : (i + 1) * n] for i in range(len(examples))]
    predictions = []
    for example, text, best, row, drawn in zip(
        examples, greedy, scores.best(), scores.mean_logprob, samples, strict=True
    ):
        parsed = [method.parse(s, example) for s in drawn]
        predictions.append(
            Prediction(
                id=example.id,
                gold_index=example.answer_index,
                predicted_index=best,
                choice_scores=row,
                generated=text,
                generated_index=method.parse(text, example),
                samples=drawn,
                sample_indices=parsed,
                vote_index=majority_vote(parsed) if drawn else None,
                details=method.eval_details(example),
            )
        )
    return predictions


def progress_bar(settings: EvalSettings, total: int) -> tqdm:
    """Questions answered (generation, and with voting its samples), so a minutes-long KARD vote shows it moves; off
    unless asked and stderr is a terminal: a Ray worker's stderr is its log file, where a bar's redraws are spam."""
    from tqdm.auto import tqdm

    voting = f", {settings.vote_samples} samples each" if settings.vote_samples else ""
    return tqdm(
        total=total,
        desc=f"dev eval (greedy{voting})",
        unit="q",
        disable=not (settings.progress and sys.stderr.isatty()),
        leave=False,
        dynamic_ncols=True,
    )


def evaluate(
    method: AnswerScoringTask,
    model: nn.Module,
    examples: list[QAExample],
    strategy: DistributedContext,
    settings: EvalSettings,
    generation_kwargs: dict[str, Any],
) -> EvalResult:
    """Each rank answers a strided shard (trainer.evaluation.sharding); sampling uses its own RNG stream (seeded per
    rank) so evaluating never shifts the training run's random state."""
    method.check_eval_examples(examples)
    was_training = model.training
    model.eval()
    devices = [strategy.device] if strategy.device.type == "cuda" else []

    def answer(shard: list[QAExample]) -> list[Prediction]:
        predictions: list[Prediction] = []
        with progress_bar(settings, len(shard)) as bar:
            for chunk in _chunks(shard, settings.batch_size):
                predictions.extend(predict_batch(method, model, chunk, strategy.device, settings, generation_kwargs))
                bar.update(len(chunk))
        return predictions

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed + strategy.rank)
        predictions = shard_and_gather(examples, strategy, answer)
    model.train(was_training)
    return EvalResult(predictions, voted=settings.vote_samples > 0)
