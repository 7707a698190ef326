"""A seeded knowledge-intensive task for KARD at CPU scale: the fact a dev question needs is only in the corpus.

A world of made-up entities, each of one category, and a category x property truth table. A question asks
whether an entity has a property (or which of 3-4 properties it has). Its rationale reads "E is a C. every C is
P." The category -> property table is learnable from training rationales, but which category an entity belongs
to is stated only in the corpus, and dev asks only about entities that never appear in training: a model that
cannot read that passage is at chance.

The corpus makes the question a worse query than the rationale: besides the entity's one category passage
("E is a C ..."), each entity has story passages that repeat its name and list properties, so BM25 with the
question ("Is E P?") often ranks a story first, while the rationale, which names the category, finds the category
passage. A reranker trained on rationale relevance can learn what a category passage looks like.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.jsonl import write_jsonl_gz
from trainer.data.synthetic import make_names

_PROPERTIES = (
    "fuzzy", "striped", "spotted", "venomous", "nocturnal", "edible", "aquatic", "loud", "tiny", "heavy",
    "shiny", "hollow", "brittle", "sticky", "fragrant", "bitter", "sweet", "slimy", "woolly", "scaly",
)  # fmt: skip
_YESNO = ("Is {e} {p}?", "Would you call {e} {p}?", "Is it true that {e} is {p}?")
_WHICH = ("Which of these describes {e}?", "Which one of these words fits {e}?")
_RATIONALE_POSITIVE = ("{e} is a {c}. every {c} is {p}.", "{e} is a {c}, and a {c} is always {p}.")
_RATIONALE_NEGATIVE = ("{e} is a {c}. no {c} is {p}.", "{e} is a {c}, and a {c} is never {p}.")
_CATEGORY_PASSAGE = "{e} is a {c}. like every {c}, {e} is found in the {r} lands."
_STORY_PASSAGES = (
    "old stories say {e} was {p1} and {p2}. in those stories {e} wanders far.",
    "travellers wrote that {e} seemed {p1}, {p2} and {p3}, yet {e} was rarely seen.",
    "a song calls {e} {p1}; another song calls {e} {p2}.",
)
_REGIONS = ("northern", "southern", "eastern", "western", "coastal", "mountain")


@dataclass(frozen=True)
class SyntheticKBSpec:
    """Size and seed; the same spec always yields the same bytes."""

    num_train_entities: int = 150
    num_dev_entities: int = 60
    num_categories: int = 6
    num_properties: int = 12
    stories_per_entity: int = 3
    num_train: int = 2400
    num_dev: int = 240
    seed: int = 0
    choice_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.num_categories < 2 or not 4 <= self.num_properties <= len(_PROPERTIES):
            raise ValueError(f"need >= 2 categories and 4..{len(_PROPERTIES)} properties")
        if min(self.num_train_entities, self.num_dev_entities) < self.num_categories:
            raise ValueError("need at least one train and one dev entity per category")


@dataclass
class SyntheticKBTask:
    spec: SyntheticKBSpec
    train: list[dict] = field(default_factory=list)
    dev: list[dict] = field(default_factory=list)
    passages: list[dict] = field(default_factory=list)


def _category_table(spec: SyntheticKBSpec, rng: random.Random) -> list[tuple[bool, ...]]:
    """Distinct rows and no constant column, so the category carries the answer for every property."""
    while True:
        table = [tuple(rng.random() < 0.5 for _ in range(spec.num_properties)) for _ in range(spec.num_categories)]
        if len(set(table)) == len(table) and all(
            len({row[p] for row in table}) == 2 for p in range(spec.num_properties)
        ):
            return table


def generate_synthetic_kb_task(spec: SyntheticKBSpec) -> SyntheticKBTask:
    rng = random.Random(spec.seed)
    reserved = {w.strip(".,;?") for t in (*_YESNO, *_WHICH, *_RATIONALE_POSITIVE, *_RATIONALE_NEGATIVE,
                                          _CATEGORY_PASSAGE, *_STORY_PASSAGES) for w in t.lower().split()}  # fmt: skip
    reserved.update(_PROPERTIES + _REGIONS)
    categories = make_names(rng, spec.num_categories, 3, reserved)
    entities = make_names(rng, spec.num_train_entities + spec.num_dev_entities, 2, reserved)
    properties = list(_PROPERTIES[: spec.num_properties])
    table = _category_table(spec, rng)
    category_of = {e: i % spec.num_categories for i, e in enumerate(entities)}
    order = list(entities)
    rng.shuffle(order)
    train_entities, dev_entities = order[: spec.num_train_entities], order[spec.num_train_entities :]

    def truth(entity: str, prop: int) -> bool:
        return table[category_of[entity]][prop]

    def rationale(entity: str, prop: int, template: int) -> str:
        templates = _RATIONALE_POSITIVE if truth(entity, prop) else _RATIONALE_NEGATIVE
        c = categories[category_of[entity]]
        return templates[template].format(e=entity, c=c, p=properties[prop])

    def rows(split: str, pool: list[str], count: int) -> list[dict]:
        out: list[dict] = []
        while len(out) < count:
            entity = rng.choice(pool)
            templates = rng.sample(range(len(_RATIONALE_POSITIVE)), len(_RATIONALE_POSITIVE))
            if rng.random() < spec.choice_fraction:
                positives = [p for p in range(spec.num_properties) if truth(entity, p)]
                negatives = [p for p in range(spec.num_properties) if not truth(entity, p)]
                options = [rng.choice(positives), *rng.sample(negatives, rng.choice((2, 3)))]
                rng.shuffle(options)
                answer = next(i for i, p in enumerate(options) if truth(entity, p))
                question = rng.choice(_WHICH).format(e=entity)
                choices = [properties[p] for p in options]
                rationales = [rationale(entity, options[answer], t) for t in templates]
            else:
                prop = rng.randrange(spec.num_properties)
                answer = 0 if truth(entity, prop) else 1
                question = rng.choice(_YESNO).format(e=entity, p=properties[prop])
                choices = ["yes", "no"]
                rationales = [rationale(entity, prop, t) for t in templates]
            index = len(out)
            out.append(
                {
                    "id": f"synthetic-kb-s{spec.seed}-{split}-{index:05d}",
                    "question": question,
                    "choices": choices,
                    "answer_index": answer,
                    "answer": choices[answer],
                    "rationales": rationales,
                    "rationale_source": "synthetic-kb-template-v1",
                    "facts": [rationales[0]],
                    "qid": hashlib.sha1(f"{spec.seed}/{split}/{index}/{question}".encode()).hexdigest()[:20],
                }
            )
        return out

    passages = []
    for number, entity in enumerate(entities):
        c = categories[category_of[entity]]
        region = _REGIONS[category_of[entity] % len(_REGIONS)]
        text = _CATEGORY_PASSAGE.format(e=entity, c=c, r=region)
        passages.append({"id": f"{300000 + number}_0", "title": entity, "text": text})
        for story in range(spec.stories_per_entity):
            p1, p2, p3 = rng.sample(properties, 3)
            text = _STORY_PASSAGES[story % len(_STORY_PASSAGES)].format(e=entity, p1=p1, p2=p2, p3=p3)
            passages.append({"id": f"{300000 + number}_{story + 1}", "title": entity, "text": text})
    for index, category in enumerate(categories):
        listed = [p for p, v in zip(properties, table[index], strict=True) if v]
        passages.append(
            {"id": f"{400000 + index}_0", "title": category, "text": f"every {category} is {', '.join(listed)}."}
        )
    rng.shuffle(passages)
    return SyntheticKBTask(
        spec, rows("train", train_entities, spec.num_train), rows("dev", dev_entities, spec.num_dev), passages
    )


def write_corpus(spec: SyntheticKBSpec, directory: Path) -> Path:
    """The task's passages as an id/title/text .jsonl.gz (deterministic bytes), written once per spec."""
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    path = directory / f"synthetic_kb-{spec.seed}-{digest}.jsonl.gz"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        write_jsonl_gz(generate_synthetic_kb_task(spec).passages, path)
    return path
