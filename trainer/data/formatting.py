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


def format_choice(choice: str) -> str:
    """How an answer is written in every target: the choice's own text."""
    return choice


def format_answer(example: QAExample) -> str:
    """The output (O): the gold choice as targets write it."""
    return format_choice(example.answer)


def _normalise(text: str) -> str:
    """Lower-case, single-spaced, without surrounding punctuation: the form options are compared in."""
    return " ".join(text.lower().split()).strip(" .,;:!?\"'")


def _whole_word_pattern(option: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(option)}(?!\w)")


def mentions_option(text: str, option: str) -> bool:
    """Whether `text` contains the option's text as whole words, compared as parse_choice compares them."""
    normalised = _normalise(option)
    return bool(normalised) and _whole_word_pattern(normalised).search(_normalise(text)) is not None


def parse_choice(text: str, choices: tuple[str, ...]) -> int | None:
    """Map an answer text to a choice index, or None when it names no choice unambiguously.

    In order: the whole text is an option's text; the text is an option letter (`b`, `(B)`, `(b) fish`);
    the text contains exactly one option as whole words (an option contained in a longer matched option,
    like "fish" in "long sea fish", does not count against it). Never substrings: "unknown" and
    "i do not know" name neither "no" nor "know". Which part of a generation holds the answer is the
    method's business (see Method.answer_text).
    """
    candidate = _normalise(text)
    options = [_normalise(c) for c in choices]
    if not candidate:
        return None
    if candidate in options:
        return options.index(candidate)
    letter = re.fullmatch(r"\(([a-j])\)\s*(.*)|([a-j])(?:[.):]\s*(.*))?", candidate)
    if letter:
        index = OPTION_LETTERS.lower().index(letter.group(1) or letter.group(3))
        rest = letter.group(2) or letter.group(4)
        if index < len(choices) and (not rest or _normalise(rest) == options[index]):
            return index
        if rest:  # "(a) no": a letter and another option's text contradict each other
            return None
    matched = [i for i, option in enumerate(options) if option and _whole_word_pattern(option).search(candidate)]
    if not matched:
        return None
    longest = max(matched, key=lambda i: len(options[i]))
    if all(_whole_word_pattern(options[i]).search(options[longest]) for i in matched):
        return longest
    return None


def tokenizer_corpus(examples: list[QAExample]) -> list[str]:
    """Every text a method may encode, for training an offline tokenizer; prompts included."""
    texts = [f"question: options: {ANSWER_PREFIX} {RATIONALE_PREFIX} [answer] [explain]"]
    for ex in examples:
        texts.extend([format_question(ex), *ex.facts, *ex.rationales])
    return texts
