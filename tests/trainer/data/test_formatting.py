import pytest

from trainer.data.example import QAExample
from trainer.data.formatting import format_question, parse_choice

CHOICES = ("Deep sea animals", "fish", "Long Sea Fish")
YES_NO = ("yes", "no")


def test_format_question_lists_lettered_options() -> None:
    ex = QAExample(id="1", question="What are they?", choices=CHOICES, answer_index=0)
    assert format_question(ex) == "question: What are they? options: (A) Deep sea animals (B) fish (C) Long Sea Fish"


def test_parse_exact_text_letters_and_whole_words() -> None:
    assert parse_choice("fish", CHOICES) == 1
    assert parse_choice(" Long sea fish. ", CHOICES) == 2
    assert parse_choice("(c)", CHOICES) == 2
    assert parse_choice("b", CHOICES) == 1
    assert parse_choice("(B) fish", CHOICES) == 1
    assert parse_choice("b) fish", CHOICES) == 1
    assert parse_choice("a fish", CHOICES) == 1  # the article is no option letter
    assert parse_choice("they are long sea fish indeed", CHOICES) == 2  # "fish" lies inside the longer match
    assert parse_choice("no idea", CHOICES) is None
    assert parse_choice("(z)", CHOICES) is None
    assert parse_choice("", CHOICES) is None


@pytest.mark.parametrize(
    "text",
    ["unknown", "i do not know", "nothing", "know", "nobody", "yesterday", "eyes", "noyes", "not sure", "(c)"],
)
def test_parse_never_matches_substrings_of_words(text: str) -> None:
    assert parse_choice(text, YES_NO) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("no", 1), ("No.", 1), ("the answer is no", 1), ("yes, it can", 0), ("(a)", 0), ("B.", 1), ("yes and no", None)],
)
def test_parse_yes_no(text: str, expected: int | None) -> None:
    assert parse_choice(text, YES_NO) == expected


def test_a_letter_followed_by_another_options_text_is_ambiguous() -> None:
    assert parse_choice("(a) no", YES_NO) is None
