from trainer.evaluation.voting import majority_vote


def test_majority_wins_and_unparsed_samples_do_not_vote() -> None:
    assert majority_vote([1, None, 0, 1, None]) == 1
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_a_tie_goes_to_the_answer_reached_first() -> None:
    assert majority_vote([2, 0, 0, 2]) == 2
    assert majority_vote([None, 0, 2]) == 0
