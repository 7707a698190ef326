"""Keep only LLM rationales that lead to the gold answer (KARD trains on those alone).

Two ways, counted per reason so every run says what it dropped:
- parse: read the answer the rationale itself states at its end ("... so the answer is (B) no.");
- verifier: a seq2seq reader model gets question + rationale + " So, the answer is" and must rank the gold
  choice first by choice scoring (the paper's filter, with Flan-T5 as reader).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from trainer.data.example import QAExample
from trainer.data.formatting import OPTION_LETTERS, format_choice, format_question, parse_choice
from trainer.evaluation.choice_scoring import score_choices

KEPT = "kept"
WRONG_ANSWER = "wrong_answer"
NO_STATED_ANSWER = "no_stated_answer"
VERIFIER_REJECTED = "verifier_rejected"
VERIFIER_PROMPT = "{question}\n{rationale}\nSo, the answer is"

# Final-answer statements, matched anywhere; the last one in the text wins.
_SENTENCE = r"[^\n]*?(?=[.!?](?:\s|$)|\n|$)"  # up to the end of the sentence, so later statements still match
_STATEMENTS = re.compile(
    rf"answer\s+(?:is|would be|should be)\s*:?\s*(?P<after>{_SENTENCE})"
    rf"|answer\s*:\s*(?P<colon>{_SENTENCE})"
    r"|option\s*\(?(?P<option>[a-j])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)"
    r"|\((?P<marked>[a-j])\)\s+is\s+(?:the\s+)?(?:correct|right|best)",
    re.IGNORECASE,
)
_LEADING_LETTER = re.compile(r"^\s*\(([a-j])\)", re.IGNORECASE)


def stated_answer(rationale: str, choices: Sequence[str]) -> int | None:
    """The choice a rationale's last final-answer statement names; None when it states none we can read."""
    matches = list(_STATEMENTS.finditer(rationale))
    if not matches:
        return None
    last = matches[-1]
    letter = last.group("option") or last.group("marked")
    if letter is None:
        sentence = (last.group("after") if last.group("after") is not None else last.group("colon")).strip()
        marked = _LEADING_LETTER.match(sentence)
        if not marked:
            return parse_choice(sentence, tuple(choices))
        letter = marked.group(1)
    index = OPTION_LETTERS.lower().index(letter.lower())
    return index if index < len(choices) else None


@dataclass
class FilterReport:
    """How many rationales were kept and dropped, per reason."""

    counts: Counter[str] = field(default_factory=Counter)

    def metrics(self, prefix: str = "filter") -> dict[str, float]:
        total = sum(self.counts.values())
        values = {f"{prefix}/{reason}": float(n) for reason, n in sorted(self.counts.items())}
        values[f"{prefix}/total"] = float(total)
        values[f"{prefix}/kept_rate"] = self.counts[KEPT] / total if total else 0.0
        return values


@dataclass(frozen=True)
class RationaleCandidate:
    example: QAExample
    index: int  # position in example.rationales
    text: str


def parse_filter(candidates: Sequence[RationaleCandidate], keep_unstated: bool) -> list[str]:
    """A reason per candidate: kept, wrong_answer, or no_stated_answer (kept as "kept" when keep_unstated)."""
    reasons = []
    for candidate in candidates:
        answer = stated_answer(candidate.text, candidate.example.choices)
        if answer is None:
            reasons.append(KEPT if keep_unstated else NO_STATED_ANSWER)
        else:
            reasons.append(KEPT if answer == candidate.example.answer_index else WRONG_ANSWER)
    return reasons


class VerifierFilter:
    """A reader model that must pick the gold choice after reading the rationale, batched.

    Loads once (any HF seq2seq name, path, or a resolved MLflow model dir) and runs on the given device; a Ray
    Data actor holds one per worker.
    """

    def __init__(self, model_source: str, device: str = "cpu", batch_size: int = 16, max_length: int = 512) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_source)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_source).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    def _plain(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def __call__(self, candidates: Sequence[RationaleCandidate]) -> list[str]:
        reasons: list[str] = []
        eos = [self.tokenizer.eos_token_id]
        for start in range(0, len(candidates), self.batch_size):
            chunk = candidates[start : start + self.batch_size]
            prompts = [VERIFIER_PROMPT.format(question=format_question(c.example), rationale=c.text) for c in chunk]
            encoded = self.tokenizer(
                prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
            ).to(self.device)
            encoder_outputs = self.model.get_encoder()(**encoded, return_dict=True)
            choices = [[self._plain(format_choice(choice)) + eos for choice in c.example.choices] for c in chunk]
            scores = score_choices(self.model, encoder_outputs, encoded["attention_mask"], [[] for _ in chunk], choices)
            reasons.extend(
                KEPT if best == c.example.answer_index else VERIFIER_REJECTED
                for best, c in zip(scores.best(), chunk, strict=True)
            )
        return reasons


def filter_rationales(
    examples: Sequence[QAExample],
    judge: Callable[[Sequence[RationaleCandidate]], list[str]],
) -> tuple[list[RationaleCandidate], FilterReport]:
    """Run a judge (parse_filter or a VerifierFilter) over every rationale; returns the kept ones and the counts."""
    candidates = [RationaleCandidate(ex, i, text) for ex in examples for i, text in enumerate(ex.rationales)]
    reasons = judge(candidates) if candidates else []
    report = FilterReport(Counter(reasons))
    return [c for c, reason in zip(candidates, reasons, strict=True) if reason == KEPT], report
