"""Rationale selection and the FTR answer-leakage statistics logged per run."""

import random

import pytest

from trainer.data.example import QAExample
from trainer.data.formatting import mentions_option
from trainer.data.rationales import answer_leakage, main, select_rationales, states_answer

YES_NO = QAExample(id="y", question="Can fish climb?", choices=("yes", "no"), answer_index=1)
TREES = QAExample(id="t", question="What grows?", choices=("tree", "rock", "big tree"), answer_index=2)


@pytest.mark.parametrize(
    ("text", "option", "expected"),
    [
        ("Fish cannot climb, so no.", "no", True),
        ("The answer is unknown.", "no", False),  # a substring is not a mention
        ("I do not know", "no", False),
        ("A BIG  Tree grows.", "big tree", True),  # case and spacing are normalised as parse_choice does
        ("treehouse", "tree", False),
        ("anything", "", False),
    ],
)
def test_mentions_option_matches_whole_words_only(text: str, option: str, expected: bool) -> None:
    assert mentions_option(text, option) is expected


@pytest.mark.parametrize(
    ("ftr", "example", "expected"),
    [
        ("Fish have no legs. The correct answer is (B) no.", YES_NO, True),
        ("Fish have no legs.\n7. Hence the answer is (B).", YES_NO, True),
        ("Fish have no legs. So (A) is wrong and (B) is right.", YES_NO, False),  # names two options
        ("No fish can climb. Fish live in water.", YES_NO, False),  # the label is not at the end
        ("The answer is (A) yes. Actually no.", YES_NO, True),  # the last sentence is what counts
        ("Trees grow. It is a big tree.", TREES, True),  # the longer option contains the shorter one
        ("Trees grow. It is a tree.", TREES, False),
    ],
)
def test_states_answer_reads_the_last_sentence(ftr: str, example: QAExample, expected: bool) -> None:
    assert states_answer(ftr, example) is expected


def test_answer_leakage_counts_the_ftrs_the_run_trains_on() -> None:
    examples = [
        QAExample(id="a", question="?", choices=("yes", "no"), answer_index=1,
                  rationales=("It cannot. The answer is (B) no.", "Fish swim."), facts=("Fish swim.",)),
        QAExample(id="b", question="?", choices=("yes", "no"), answer_index=0,
                  rationales=("Yes, ice is cold.",), facts=("Ice is frozen water.", "It is cold.")),
        QAExample(id="c", question="?", choices=("yes", "no"), answer_index=0),  # no FTR of any kind
    ]  # fmt: skip
    llm = answer_leakage(examples, "llm_all", seed=0)
    assert llm == {
        "data/num_train_ftrs": 3.0,
        "data/ftr_answer_leak_rate": pytest.approx(2 / 3),
        "data/ftr_states_answer_rate": pytest.approx(2 / 3),  # a one-sentence FTR that names it counts
    }
    facts = answer_leakage(examples, "facts", seed=0)
    assert facts["data/num_train_ftrs"] == 2.0 and facts["data/ftr_answer_leak_rate"] == 0.0
    # llm_random draws as build_features does: one seeded generator, examples in order.
    rng = random.Random(5)
    drawn = [ftr for ex in examples for ftr in select_rationales(ex, "llm_random", rng)]
    expected = sum(mentions_option(f, ex.answer) for f, ex in zip(drawn, examples, strict=False)) / len(drawn)
    assert answer_leakage(examples, "llm_random", seed=5)["data/ftr_answer_leak_rate"] == pytest.approx(expected)
    assert answer_leakage([], "facts", seed=0)["data/num_train_ftrs"] == 0.0


def test_cli_prints_the_leakage_of_each_source_with_ftrs(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--dataset", "synthetic"])
    lines = capsys.readouterr().out.splitlines()
    sources = ("facts", "llm_first", "llm_random", "llm_all")
    assert [line.split(":")[0] for line in lines] == [f"synthetic {source}" for source in sources]
    assert all("contain the gold answer" in line and "end by stating it" in line for line in lines)
