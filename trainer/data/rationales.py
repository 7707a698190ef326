"""Which free-text rationale(s) a method reads for an example (config `data.rationale_source`)."""

from __future__ import annotations

import random
from typing import Literal

from trainer.data.example import QAExample

RationaleSource = Literal["facts", "llm_first", "llm_random", "llm_all"]


def select_rationales(example: QAExample, source: RationaleSource, rng: random.Random) -> list[str]:
    """Human facts joined into one FTR, or the LLM rationales (first, one at random, or all of them).

    An empty list means the example has no rationale of that kind.
    """
    if source == "facts":
        return [" ".join(example.facts)] if example.facts else []
    if not example.rationales:
        return []
    if source == "llm_first":
        return [example.rationales[0]]
    if source == "llm_random":
        return [rng.choice(example.rationales)]
    return list(example.rationales)
