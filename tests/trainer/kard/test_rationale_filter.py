"""Rationale filtering: the stated final answer, per-reason counts, and the verifier on a real tiny T5."""

import functools
from pathlib import Path

import pytest
import torch

from trainer.data.example import QAExample
from trainer.data.formatting import tokenizer_corpus
from trainer.evaluation.choice_scoring import score_choices
from trainer.kard.rationale_filter import (
    KEPT,
    NO_STATED_ANSWER,
    VERIFIER_PROMPT,
    VERIFIER_REJECTED,
    WRONG_ANSWER,
    RationaleCandidate,
    VerifierFilter,
    filter_rationales,
    parse_filter,
    stated_answer,
)
from trainer.models.tokenizer import tokenizer_from_json, train_tokenizer_json

YES_NO = ("yes", "no")
OBQA = ("warm lights that float", "made out of nitrate", "great balls of gas", "lights in the sky")


@pytest.mark.parametrize(
    ("text", "choices", "expected"),
    [
        ("The RAF was formed in 1918. The answer is (B) no.", YES_NO, 1),
        ("So the answer is: Yes.", YES_NO, 0),
        ("Thus, answer: no", YES_NO, 1),
        ("Therefore, answer (B) is the correct option.", YES_NO, 1),
        ("Option (C) is correct because stars burn gas.", OBQA, 2),
        ("Option (A) is incorrect. Option (C) is the correct one.", OBQA, 2),
        ("The correct answer is (C) great balls of gas burning far away.", OBQA, 2),  # the letter decides
        ("The answer is 3.14 meters.", ("3.14 meters", "2 meters"), 0),
        ("The answer is no. On reflection, (A) is the correct choice.", YES_NO, 0),  # the last statement wins
        ("Fish have no legs, so they cannot climb.", YES_NO, None),  # "no" inside the reasoning is no statement
        ("The answer is unknown.", YES_NO, None),
        ("The answer is (E).", YES_NO, None),
    ],
)
def test_stated_answer(text: str, choices: tuple[str, ...], expected: int | None) -> None:
    assert stated_answer(text, choices) == expected


def test_parse_filter_counts_every_reason() -> None:
    example = QAExample(
        id="q",
        question="Can fish climb?",
        choices=YES_NO,
        answer_index=1,
        rationales=("No legs. The answer is no.", "They can. The answer is yes.", "Fish swim in water."),
    )
    kept, report = filter_rationales([example], functools.partial(parse_filter, keep_unstated=False))
    assert [c.index for c in kept] == [0]
    assert report.counts == {KEPT: 1, WRONG_ANSWER: 1, NO_STATED_ANSWER: 1}
    assert report.metrics()["filter/kept_rate"] == pytest.approx(1 / 3)
    kept, report = filter_rationales([example], functools.partial(parse_filter, keep_unstated=True))
    assert [c.index for c in kept] == [0, 2] and report.counts == {KEPT: 2, WRONG_ANSWER: 1}


def test_verifier_keeps_exactly_the_rationales_after_which_the_reader_ranks_gold_first(tmp_path: Path) -> None:
    """A real (untrained, seeded) T5 reader: its decisions must match choice scoring of the same prompts."""
    from transformers import T5Config, T5ForConditionalGeneration

    examples = [
        QAExample(id=f"q{i}", question=f"Is thing {i} big?", choices=YES_NO, answer_index=i % 2,
                  rationales=(f"thing {i} is large.", f"thing {i} is small.", "unclear."))
        for i in range(4)
    ]  # fmt: skip
    tokenizer = tokenizer_from_json(train_tokenizer_json(tokenizer_corpus(examples) + ["so, the answer is"], 300))
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, dropout_rate=0.0,
    )  # fmt: skip
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    verifier = VerifierFilter(str(tmp_path), batch_size=5)
    kept, report = filter_rationales(examples, verifier)
    assert sum(report.counts.values()) == 12 and set(report.counts) <= {KEPT, VERIFIER_REJECTED}

    from trainer.data.formatting import format_question

    expected = []
    for example in examples:
        for index, text in enumerate(example.rationales):
            prompt = VERIFIER_PROMPT.format(question=format_question(example), rationale=text)
            encoded = tokenizer([prompt], return_tensors="pt")
            encoder_outputs = verifier.model.get_encoder()(**encoded)
            choices = [[*tokenizer(c, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id] for c in YES_NO]
            scores = score_choices(verifier.model, encoder_outputs, encoded["attention_mask"], [[]], [choices])
            if scores.best()[0] == example.answer_index:
                expected.append((example.id, index))
    assert [(c.example.id, c.index) for c in kept] == expected


def test_candidates_carry_their_position() -> None:
    example = QAExample(id="q", question="?", choices=YES_NO, answer_index=0, rationales=("a", "b"))
    kept, _ = filter_rationales([example], lambda cs: [KEPT] * len(cs))
    assert kept == [RationaleCandidate(example, 0, "a"), RationaleCandidate(example, 1, "b")]
