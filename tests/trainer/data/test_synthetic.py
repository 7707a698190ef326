import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.data.synthetic import (
    RATIONALE_SOURCE,
    SyntheticTaskSpec,
    generate_synthetic_task,
    write_synthetic_task,
)

SMALL = SyntheticTaskSpec(num_entities=60, num_categories=6, num_properties=10, num_train=400, num_dev=120, seed=7)
FIELDS = {
    "id",
    "question",
    "choices",
    "answer_index",
    "answer",
    "rationales",
    "rationale_source",
    "facts",
    "qid",
}

# One pattern per rationale template: (entity, category, polarity, property) of each clause.
_CLAUSES = (
    re.compile(r"(?P<e>\w+) is a (?P<c>\w+)\. (?P=c)s are (?P<neg>not )?(?P<p>\w+)\."),
    re.compile(r"(?P<e>\w+) belongs to the (?P<c>\w+) kind, and (?P<q>every|no) (?P=c) is (?P<p>\w+)\."),
    re.compile(r"As a (?P<c>\w+), (?P<e>\w+) is (?P<neg>not )?(?P<p>\w+)\."),
    re.compile(r"(?P<c>\w+)s are (?P<q>always|never) (?P<p>\w+), and (?P<e>\w+) is a (?P=c)\."),
)


def parse_rationale(text: str) -> list[tuple[str, str, str, bool]]:
    """Rule-based reader: split a rationale into (entity, category, property, holds) clauses, or fail."""
    clauses, position = [], 0
    while position < len(text):
        match = next((m for p in _CLAUSES if (m := p.match(text, position))), None)
        assert match is not None, f"unparsed rationale text: {text[position:]!r}"
        groups = match.groupdict()
        holds = groups.get("neg") is None and groups.get("q") not in ("no", "never")
        clauses.append((groups["e"], groups["c"], groups["p"], holds))
        position = match.end() + 1  # clauses are joined by one space
    return clauses


def answer_from_rationale(text: str) -> str:
    clauses = parse_rationale(text)
    if len(clauses) == 1:
        return "yes" if clauses[0][3] else "no"
    (positive,) = [prop for _, _, prop, holds in clauses if holds]
    return positive


def _pairs(row: dict) -> set[tuple[str, str]]:
    return {(entity, prop) for entity, _, prop, _ in parse_rationale(row["rationales"][0])}


@pytest.fixture(scope="module")
def task():
    return generate_synthetic_task(SyntheticTaskSpec())


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = write_synthetic_task(SMALL, tmp_path / "a")
    second = write_synthetic_task(SMALL, tmp_path / "b")
    other = write_synthetic_task(SyntheticTaskSpec(**{**SMALL.__dict__, "seed": 8}), tmp_path / "c")
    assert set(first) == {"train", "dev", "passages"}
    for name in first:
        assert first[name].name == f"{name}.jsonl.gz"
        assert first[name].read_bytes() == second[name].read_bytes()
        assert first[name].read_bytes() != other[name].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "dev.jsonl.gz",
        "passages.jsonl.gz",
        "train.jsonl.gz",
    ]


def test_written_files_round_trip_to_the_in_memory_task(tmp_path: Path) -> None:
    paths = write_synthetic_task(SMALL, tmp_path)
    task = generate_synthetic_task(SMALL)
    for name, rows in (("train", task.train), ("dev", task.dev), ("passages", task.passages)):
        with gzip.open(paths[name], "rt", encoding="utf-8") as handle:
            assert [json.loads(line) for line in handle] == rows


def test_rows_follow_the_shared_schema(task) -> None:
    assert len(task.train) == task.spec.num_train and len(task.dev) == task.spec.num_dev
    ids = [row["id"] for row in task.train + task.dev]
    assert len(set(ids)) == len(ids)
    for row in task.train + task.dev:
        assert set(row) == FIELDS
        assert row["answer"] == row["choices"][row["answer_index"]]
        assert 2 <= len(row["choices"]) <= 4 and len(set(row["choices"])) == len(row["choices"])
        assert 2 <= len(row["rationales"]) <= 3 and len(set(row["rationales"])) == len(row["rationales"])
        assert row["facts"] and row["rationale_source"] == RATIONALE_SOURCE
        assert row["question"].endswith("?") and re.fullmatch(r"[0-9a-f]{20}", row["qid"])


def test_both_question_kinds_and_both_answers_occur(task) -> None:
    for rows in (task.train, task.dev):
        yes_no = [row for row in rows if row["choices"] == ["yes", "no"]]
        answers = [row["answer"] for row in yes_no]
        assert 0.3 < answers.count("yes") / len(answers) < 0.7
        assert len(rows) - len(yes_no) > 0.1 * len(rows)


def test_every_rationale_alone_determines_the_gold_answer(task) -> None:
    rows = task.train + task.dev
    for row in rows:
        for rationale in row["rationales"]:
            assert answer_from_rationale(rationale) == row["answer"], row["id"]


def test_facts_agree_with_rationale(task) -> None:
    for row in task.train[:200]:
        clauses = parse_rationale(row["rationales"][0])
        expected = set()
        for entity, category, prop, holds in clauses:
            expected |= {f"{entity} is a {category}.", f"{category}s are {'' if holds else 'not '}{prop}."}
        assert set(row["facts"]) == expected


def test_dev_pairs_are_unseen_in_train_but_entities_are_known(task) -> None:
    train_pairs = set().union(*(_pairs(row) for row in task.train))
    dev_pairs = set().union(*(_pairs(row) for row in task.dev))
    assert not train_pairs & dev_pairs
    assert {entity for entity, _ in dev_pairs} <= {entity for entity, _ in train_pairs}


def test_world_is_consistent_across_rows(task) -> None:
    category_of, table = {}, {}
    for row in task.train + task.dev:
        for entity, category, prop, holds in parse_rationale(row["rationales"][0]):
            assert category_of.setdefault(entity, category) == category
            assert table.setdefault((category, prop), holds) == holds
    assert len(category_of) == task.spec.num_entities
    assert len(set(category_of.values())) == task.spec.num_categories


def test_passages_cover_every_entity_and_category(task) -> None:
    category_of = {e: c for row in task.train for e, c, _, _ in parse_rationale(row["rationales"][0])}
    titles = {passage["title"] for passage in task.passages}
    assert set(category_of) <= titles and set(category_of.values()) <= titles
    ids = [passage["id"] for passage in task.passages]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"\d+_\d+", i) for i in ids)
    for passage in task.passages:
        assert set(passage) == {"id", "title", "text"} and passage["title"] in passage["text"]
    by_title = {p["title"]: p["text"] for p in task.passages}
    entity, category = next(iter(category_of.items()))
    assert f"{entity} is a {category}." in by_title[entity]


def test_vocabulary_stays_small(task) -> None:
    text = " ".join(r["question"] + " " + " ".join(r["rationales"] + r["choices"]) for r in task.train + task.dev)
    words = set(re.findall(r"\w+", text.lower()))
    assert len(words) < 500


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticTaskSpec(dev_properties_per_entity=16)
    with pytest.raises(ValueError):
        SyntheticTaskSpec(num_categories=1)


def test_more_properties_than_built_in_adjectives() -> None:
    spec = SyntheticTaskSpec(num_entities=30, num_categories=4, num_properties=30, num_train=50, num_dev=20)
    task = generate_synthetic_task(spec)
    for row in task.train + task.dev:
        assert answer_from_rationale(row["rationales"][0]) == row["answer"]


def test_cli_writes_files(tmp_path: Path) -> None:
    args = [
        "--out",
        str(tmp_path),
        "--seed",
        "3",
        "--num-train",
        "50",
        "--num-dev",
        "20",
        "--num-entities",
        "40",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "trainer.data.synthetic", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert "train:" in result.stdout
    with gzip.open(tmp_path / "train.jsonl.gz", "rt") as handle:
        assert sum(1 for _ in handle) == 50
