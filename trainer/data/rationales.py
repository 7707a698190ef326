"""Which free-text rationale(s) a method reads for an example (config `data.rationale_source`)."""

from __future__ import annotations

import argparse
import random
import re
from typing import Literal

from trainer.config.schema import DataConfig
from trainer.data.example import QAExample
from trainer.data.formatting import OPTION_LETTERS, mentions_option, parse_choice
from trainer.data.registry import load_splits

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


def _last_sentence(text: str) -> str:
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()]
    return sentences[-1] if sentences else ""


def states_answer(ftr: str, example: QAExample) -> bool:
    """Whether the FTR's last sentence names the gold option and no other, by its letter as the task input writes
    it ("(B)") or by its text (parse_choice): "... so the answer is (B) no."."""
    last = _last_sentence(ftr).lower()
    letters = [i for i in range(len(example.choices)) if f"({OPTION_LETTERS[i].lower()})" in last]
    if letters:
        return letters == [example.answer_index]
    return parse_choice(last, example.choices) == example.answer_index


def answer_leakage(examples: list[QAExample], source: RationaleSource, seed: int) -> dict[str, float]:
    """How much of the gold answer a run's training FTRs give away (the draws `llm_random` makes with `seed`, as
    trainer.loop.build_features makes them).

    `data/ftr_answer_leak_rate`: the share of FTRs that contain the gold answer's text as whole words (the matching
    of parse_choice). `data/ftr_states_answer_rate`: the share that end by stating the label (see states_answer).
    A teacher that reads such FTRs can copy the label instead of using the reasoning, which a student cannot learn
    from.
    """
    rng = random.Random(seed)
    pairs = [(ftr, example) for example in examples for ftr in select_rationales(example, source, rng)]
    count = max(len(pairs), 1)
    return {
        "data/num_train_ftrs": float(len(pairs)),
        "data/ftr_answer_leak_rate": sum(mentions_option(ftr, ex.answer) for ftr, ex in pairs) / count,
        "data/ftr_states_answer_rate": sum(states_answer(ftr, ex) for ftr, ex in pairs) / count,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m trainer.data.rationales --dataset obqa`: answer_leakage of a dataset's training split, per
    rationale source that has any FTR there."""
    parser = argparse.ArgumentParser(description="FTR answer leakage of a dataset's training split")
    parser.add_argument("--dataset", default="strategyqa")
    parser.add_argument("--seed", type=int, default=0, help="run.seed: the train/dev split and llm_random's draws")
    args = parser.parse_args(argv)
    train = load_splits(DataConfig(dataset=args.dataset), args.seed).train
    for source in ("facts", "llm_first", "llm_random", "llm_all"):
        stats = answer_leakage(train, source, args.seed)
        if stats["data/num_train_ftrs"]:
            print(
                f"{args.dataset} {source}: {stats['data/num_train_ftrs']:.0f} FTRs, "
                f"{stats['data/ftr_answer_leak_rate']:.1%} contain the gold answer, "
                f"{stats['data/ftr_states_answer_rate']:.1%} end by stating it"
            )


if __name__ == "__main__":
    main()
