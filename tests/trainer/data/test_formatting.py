from trainer.data.example import QAExample
from trainer.data.formatting import format_question, parse_choice

CHOICES = ("Deep sea animals", "fish", "Long Sea Fish")


def test_format_question_lists_lettered_options() -> None:
    ex = QAExample(id="1", question="What are they?", choices=CHOICES, answer_index=0)
    assert format_question(ex) == "question: What are they? options: (A) Deep sea animals (B) fish (C) Long Sea Fish"


def test_parse_exact_letter_and_containment() -> None:
    assert parse_choice("fish", CHOICES) == 1
    assert parse_choice(" Long sea fish ", CHOICES) == 2
    assert parse_choice("(c)", CHOICES) == 2
    assert parse_choice("b", CHOICES) == 1
    assert parse_choice("they are long sea fish indeed", CHOICES) == 2  # the longest contained choice wins
    assert parse_choice("no idea", CHOICES) is None
    assert parse_choice("(z)", CHOICES) is None


def test_parse_answer_after_rationale_and_before_explanation() -> None:
    assert parse_choice("explanation: fish are not deep sea animals answer: fish", CHOICES) == 1
    assert parse_choice("yes explanation: no, because", ("yes", "no")) == 0
