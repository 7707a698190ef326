"""Self-consistency: the answer most sampled rationales arrive at."""

from __future__ import annotations

from collections import Counter


def majority_vote(answers: list[int | None]) -> int | None:
    """The most frequent parsed answer; a tie goes to the answer reached first. Unparsed samples do not vote."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)
