"""Plain fine-tuning baselines: I→O, I→OR (answer then rationale), I→RO (rationale then answer)."""

from __future__ import annotations

import random

from trainer.data.example import QAExample
from trainer.data.formatting import ANSWER_PREFIX, RATIONALE_PREFIX, format_answer, format_question
from trainer.evaluation.protocols import Features
from trainer.methods.seq2seq import Seq2SeqMethod, encoder_inputs, simple_feature


class FinetuneIO(Seq2SeqMethod):
    """Input → answer text."""

    name = "ft_io"

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        return [simple_feature(self, format_question(example), format_answer(example), self.cfg.data.max_target_length)]

    def eval_features(self, example: QAExample) -> Features:
        return encoder_inputs(self, format_question(example))


class FinetuneIOR(FinetuneIO):
    """Input → `answer explanation: rationale`; the answer is parsed before the explanation."""

    name = "ft_ior"
    uses_rationales = True

    def target(self, example: QAExample, rationale: str) -> str:
        return f"{format_answer(example)} {RATIONALE_PREFIX} {rationale}"

    def train_features(self, example: QAExample, rng: random.Random) -> list[Features]:
        return [
            simple_feature(self, format_question(example), self.target(example, rationale), self.max_new_tokens())
            for rationale in self.rationales(example, rng)
        ]

    def answer_terminator(self) -> list[int]:
        return self.encode_plain(RATIONALE_PREFIX)

    def answer_text(self, generated: str) -> str | None:
        return generated.split(RATIONALE_PREFIX, 1)[0]

    def max_new_tokens(self) -> int:
        """Answer + rationale + the prompt words between them, so a long rationale never pushes the answer
        out of the labels (training) or past the generation budget (evaluation)."""
        prompt_tokens = len(self.encode(f"{RATIONALE_PREFIX} {ANSWER_PREFIX}", max_length=64))
        return self.cfg.data.max_target_length + self.cfg.data.max_rationale_length + prompt_tokens


class FinetuneIRO(FinetuneIOR):
    """Input → `explanation: rationale answer: answer`; the answer is parsed after the rationale."""

    name = "ft_iro"

    def target(self, example: QAExample, rationale: str) -> str:
        # The rationale is cut before the answer so truncation can never drop the answer.
        ids = self.encode(rationale, self.cfg.data.max_rationale_length)
        rationale = str(self.tokenizer.decode(ids, skip_special_tokens=True))  # one sequence in, one text out
        return f"{RATIONALE_PREFIX} {rationale} {ANSWER_PREFIX} {format_answer(example)}"

    def answer_terminator(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    def answer_text(self, generated: str) -> str | None:
        """After the last "answer:" (LLM rationales sometimes contain the word themselves); None without one."""
        return generated.rsplit(ANSWER_PREFIX, 1)[1] if ANSWER_PREFIX in generated else None

    def scoring_prefix(self, generated: str) -> str:
        """The generated rationale up to its last "answer:", which is added when generation never wrote one."""
        rationale = generated.rsplit(ANSWER_PREFIX, 1)[0] if ANSWER_PREFIX in generated else generated
        return f"{rationale.strip()} {ANSWER_PREFIX}"
