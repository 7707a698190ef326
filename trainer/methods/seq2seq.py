"""What seq2seq (T5) students share: token encoding, where their generations hold the answer, and dev
evaluation by choice scoring (trainer.evaluation.evaluator, through its AnswerScoringTask protocol)."""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from trainer.data.example import QAExample
from trainer.data.formatting import format_choice, parse_choice
from trainer.data.rationales import select_rationales
from trainer.evaluation.evaluator import EvalResult, EvalSettings, evaluate
from trainer.evaluation.protocols import Batch, Features
from trainer.methods.base import Method
from trainer.models.factory import build_model
from trainer.models.t5_knife import encode
from trainer.objectives.task import token_cross_entropy
from trainer.strategy.protocols import DistributedContext


class Seq2SeqMethod(Method):
    """A T5 student answering multiple-choice questions; defaults describe an answer-first target (I→O)."""

    def build_model(self, model_config: PretrainedConfig) -> torch.nn.Module:
        return build_model(self.cfg.model, model_config)

    def prepare_export(self, model: torch.nn.Module) -> None:
        """The exported model carries the generation budget its answers need."""
        generation_config = model.generation_config
        assert isinstance(generation_config, GenerationConfig), "a seq2seq student is a generative HF model"
        generation_config.max_new_tokens = self.max_new_tokens()

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids ending in EOS, truncated to max_length (EOS kept)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + [self.tokenizer.eos_token_id]
        return ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of a text piece without EOS; pieces concatenate as the whole target would tokenise."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def rationales(self, example: QAExample, rng: random.Random) -> list[str]:
        return select_rationales(example, self.cfg.data.rationale_source, rng)

    def loss(self, model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Task cross-entropy on `labels`."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        task = token_cross_entropy(out.logits, batch["labels"])
        return {"loss": task, "task_loss": task.detach()}

    def max_new_tokens(self) -> int:
        return self.cfg.data.max_target_length

    # ---- AnswerScoringTask (trainer.evaluation.protocols) ---------------------------------------------
    @abstractmethod
    def eval_features(self, example: QAExample) -> Features:
        """Encoder inputs for answering one dev example."""

    def encoder_pass(self, model: torch.nn.Module, batch: Batch) -> tuple[BaseModelOutput, torch.Tensor]:
        return encode(model, batch["input_ids"], batch["attention_mask"]), batch["attention_mask"]

    def scoring_prefix(self, generated: str) -> str:
        """What the decoder writes before the answer; answer-first methods: nothing."""
        return ""

    def answer_terminator(self) -> list[int]:
        """Token ids that follow the answer in this method's target (EOS unless something comes after it)."""
        return [self.tokenizer.eos_token_id]

    def choice_continuations(self, example: QAExample) -> list[list[int]]:
        """Per choice, the ids choice scoring rates: the answer text as the target writes it, then the terminator."""
        return [self.encode_plain(format_choice(choice)) + self.answer_terminator() for choice in example.choices]

    def answer_text(self, generated: str) -> str | None:
        """The part of a generation that holds the answer; None when it never got to one."""
        return generated

    def parse(self, text: str, example: QAExample) -> int | None:
        answer = self.answer_text(text)
        return None if answer is None else parse_choice(answer, example.choices)

    def check_eval_examples(self, examples: Sequence[QAExample]) -> None:  # noqa: B027 - most methods need nothing
        """Refuse dev examples that lack what this method reads at evaluation (rather than evaluate something else)."""

    def eval_details(self, example: QAExample) -> dict[str, Any]:
        """Context worth keeping beside a dev prediction (e.g. the passages a KARD student read)."""
        return {}

    def evaluate(
        self,
        model: torch.nn.Module,
        examples: list[QAExample],
        strategy: DistributedContext,
        settings: EvalSettings,
        generation_kwargs: dict[str, Any],
    ) -> EvalResult:
        return evaluate(self, model, examples, strategy, settings, generation_kwargs)


def encoder_inputs(method: Seq2SeqMethod, source: str) -> Features:
    """The task input as encoder features (what generation needs)."""
    input_ids = method.encode(source, method.cfg.data.max_input_length)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}


def simple_feature(method: Seq2SeqMethod, source: str, target: str, max_target: int) -> Features:
    """Encoder inputs plus a target sequence as labels."""
    return {**encoder_inputs(method, source), "labels": method.encode(target, max_target)}
