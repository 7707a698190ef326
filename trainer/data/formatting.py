"""Multiple-choice text formats, kept in one place so every method and the parser agree."""

from __future__ import annotations

import re

from trainer.data.example import QAExample

OPTION_LETTERS = "ABCDEFGHIJ"
ANSWER_PREFIX = "answer:"
RATIONALE_PREFIX = "explanation:"


def format_question(example: QAExample) -> str:
    """`question: ... options: (A) yes (B) no` — the task input (I) of every method."""
    options = " ".join(f"({OPTION_LETTERS[i]}) {choice}" for i, choice in enumerate(example.choices))
    return f"question: {example.question} options: {options}"


def format_answer(example: QAExample) -> str:
    """The output (O): the gold choice's text."""
    return example.answer


def parse_choice(text: str, choices: tuple[str, ...]) -> int | None:
    """Map generated text to a choice index: exact text, then option letter, then text containment.

    Methods that emit a rationale put the answer after ANSWER_PREFIX; only that part is parsed.
    """
    if ANSWER_PREFIX in text:
        text = text.rsplit(ANSWER_PREFIX, 1)[1]
    elif RATIONALE_PREFIX in text:
        text = text.split(RATIONALE_PREFIX, 1)[0]
    candidate = text.strip().lower()
    lowered = [c.lower() for c in choices]
    if candidate in lowered:
        return lowered.index(candidate)
    letter = re.fullmatch(r"\(?([a-j])\)?\.?", candidate)
    if letter and OPTION_LETTERS.lower().index(letter.group(1)) < len(choices):
        return OPTION_LETTERS.lower().index(letter.group(1))
    contained = [i for i, c in enumerate(lowered) if c and c in candidate]
    if contained:
        return max(contained, key=lambda i: len(lowered[i]))
    return None


def tokenizer_corpus(examples: list[QAExample]) -> list[str]:
    """Every text a method may encode, for training an offline tokenizer; prompts included."""
    texts = [f"question: options: {ANSWER_PREFIX} {RATIONALE_PREFIX} [answer] [explain]"]
    for ex in examples:
        texts.extend([format_question(ex), *ex.facts, *ex.rationales])
    return texts
