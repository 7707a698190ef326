"""Deterministic synthetic reasoning task in the shared question-set schema.

Real rationale data is small and needs pretrained models; this task lets tiny T5 models trained from scratch
show the KNIFE/KARD effects in minutes on CPU. A seeded "world" fixes entity -> category and a
category x property truth table. A question asks whether an entity has a property (or which of 3-4 entities
has it); the rationale states the entity's category and the category's property value, so reading it makes the
answer easy, while a model without it must infer both hops from the training set. Dev asks only about
(entity, property) pairs that never occur in train, so answering them needs the knowledge, not memorised rows.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.jsonl import write_jsonl_gz

RATIONALE_SOURCE = "synthetic-template-v1"

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "pl", "sn")
_VOWELS = tuple("aeiou")
_CODAS = ("", "n", "r", "l", "k", "m", "x")
_ADJECTIVES = (
    "fuzzy", "striped", "spotted", "venomous", "nocturnal", "edible", "aquatic", "loud", "tiny", "heavy",
    "shiny", "hollow", "brittle", "sticky", "fragrant", "bitter", "sweet", "slimy", "woolly", "scaly",
    "feathered", "horned", "winged", "glowing",
)  # fmt: skip

_YESNO_QUESTIONS = ("Is {e} {p}?", "Would you call {e} {p}?", "Is it true that {e} is {p}?")
_CHOICE_QUESTIONS = ("Which of these describes {e}?", "Which one of these words fits {e}?")
# (positive, negative) phrasings of "entity is a category; that category does / does not have the property".
RATIONALE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{e} is a {c}. {c}s are {p}.", "{e} is a {c}. {c}s are not {p}."),
    ("{e} belongs to the {c} kind, and every {c} is {p}.", "{e} belongs to the {c} kind, and no {c} is {p}."),
    ("As a {c}, {e} is {p}.", "As a {c}, {e} is not {p}."),
    ("{c}s are always {p}, and {e} is a {c}.", "{c}s are never {p}, and {e} is a {c}."),
)
_FACT_TEMPLATES = ("{e} is a {c}.", "{c}s are {p}.", "{c}s are not {p}.")
_PASSAGE_TEMPLATE = "{e} is a {c}. it is one of the {c}s of the world."


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """Size and seed of the synthetic world; the same spec always yields the same bytes."""

    # Tuned so a 64-dim 2+2-layer T5 from scratch gets ~0.6 / ~0.78 dev accuracy input-only after 1k / 3k
    # steps but ~1.0 reading the rationale; more entities or categories make input-only hopeless.
    num_entities: int = 100
    num_categories: int = 6
    num_properties: int = 16
    num_train: int = 3000
    num_dev: int = 300
    seed: int = 0
    choice_fraction: float = 0.2  # share of 3-4 option "Which of these describes E?" questions
    dev_properties_per_entity: int = 4  # (entity, property) pairs held out of train, asked only in dev

    def __post_init__(self) -> None:
        if self.num_categories < 2 or self.num_properties < 2 or self.num_entities < self.num_categories:
            raise ValueError("need >= 2 categories, >= 2 properties and at least one entity per category")
        if not 0 < self.dev_properties_per_entity < self.num_properties:
            raise ValueError("dev_properties_per_entity must leave properties for both train and dev")
        if not 0.0 <= self.choice_fraction <= 1.0:
            raise ValueError("choice_fraction must be in [0, 1]")
        if 2**self.num_properties < self.num_categories:
            raise ValueError("too few properties to give every category a distinct truth-table row")


@dataclass
class SyntheticTask:
    """In-memory task: rows in the shared question-set schema plus the knowledge corpus."""

    spec: SyntheticTaskSpec
    train: list[dict] = field(default_factory=list)
    dev: list[dict] = field(default_factory=list)
    passages: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class _World:
    entities: tuple[str, ...]
    categories: tuple[str, ...]
    properties: tuple[str, ...]
    entity_category: tuple[int, ...]
    table: tuple[tuple[bool, ...], ...]  # [category][property]

    def truth(self, entity: int, prop: int) -> bool:
        return self.table[self.entity_category[entity]][prop]


def make_names(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    """Made-up lowercase words, so a from-scratch model has no prior about them."""
    names: list[str] = []
    while len(names) < count:
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
        word = "".join(parts)
        if word in taken or word.endswith("s") or len(word) < 4:
            continue
        taken.update((word, word + "s"))
        names.append(word)
    return names


def _make_world(spec: SyntheticTaskSpec, rng: random.Random) -> _World:
    templates = _YESNO_QUESTIONS + _CHOICE_QUESTIONS + _FACT_TEMPLATES + sum(RATIONALE_TEMPLATES, ())
    taken = {w.strip(".,?") for text in templates + (_PASSAGE_TEMPLATE,) for w in text.lower().split()}
    taken.update(_ADJECTIVES)
    categories = make_names(rng, spec.num_categories, 3, taken)
    entities = make_names(rng, spec.num_entities, 2, taken)
    properties = list(_ADJECTIVES[: spec.num_properties])
    properties += [w + "ish" for w in make_names(rng, spec.num_properties - len(properties), 2, taken)]
    world_props = range(spec.num_properties)
    while True:  # distinct category rows and no constant property column, so every hop carries information
        table = [tuple(rng.random() < 0.5 for _ in world_props) for _ in range(spec.num_categories)]
        columns_vary = all(len({row[p] for row in table}) == 2 for p in world_props)
        if len(set(table)) == len(table) and columns_vary:
            break
    entity_category = [i % spec.num_categories for i in range(spec.num_entities)]
    rng.shuffle(entity_category)
    return _World(tuple(entities), tuple(categories), tuple(properties), tuple(entity_category), tuple(table))


def _split_pairs(
    world: _World, spec: SyntheticTaskSpec, rng: random.Random
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Hold out some properties per entity for dev; train pairs are ordered so every entity appears early."""
    per_entity_train: list[list[int]] = []
    dev_pairs: list[tuple[int, int]] = []
    for entity in range(len(world.entities)):
        props = list(range(len(world.properties)))
        rng.shuffle(props)
        dev_pairs += [(entity, p) for p in props[: spec.dev_properties_per_entity]]
        per_entity_train.append(props[spec.dev_properties_per_entity :])
    train_pairs: list[tuple[int, int]] = []
    for round_index in range(len(world.properties) - spec.dev_properties_per_entity):
        order = list(range(len(world.entities)))
        rng.shuffle(order)
        train_pairs += [(entity, per_entity_train[entity][round_index]) for entity in order]
    rng.shuffle(dev_pairs)
    return train_pairs, dev_pairs


def _cycle(pairs: list[tuple[int, int]], rng: random.Random) -> Iterator[tuple[int, int]]:
    """Walk the pool in order, then in fresh shuffles, so repeats only start once the pool is used up."""
    order = list(pairs)
    while True:
        yield from order
        order = list(pairs)
        rng.shuffle(order)


def _clause(world: _World, entity: int, prop: int, template: int) -> str:
    positive, negative = RATIONALE_TEMPLATES[template]
    text = positive if world.truth(entity, prop) else negative
    name = world.entities[entity]
    return text.format(e=name, c=world.categories[world.entity_category[entity]], p=world.properties[prop])


def _facts(world: _World, entity: int, prop: int) -> list[str]:
    category = world.categories[world.entity_category[entity]]
    has_prop = _FACT_TEMPLATES[1] if world.truth(entity, prop) else _FACT_TEMPLATES[2]
    return [
        _FACT_TEMPLATES[0].format(e=world.entities[entity], c=category),
        has_prop.format(c=category, p=world.properties[prop]),
    ]


def _rationales(world: _World, options: list[tuple[int, int]], rng: random.Random) -> list[str]:
    """2-3 paraphrases; each uses one template per option so the parse is unambiguous."""
    count = rng.choice((2, 3))
    templates = rng.sample(range(len(RATIONALE_TEMPLATES)), count)
    return [" ".join(_clause(world, e, p, t) for e, p in options) for t in templates]


def _yesno_row(world: _World, entity: int, prop: int, rng: random.Random) -> dict:
    answer_index = 0 if world.truth(entity, prop) else 1
    question = rng.choice(_YESNO_QUESTIONS).format(e=world.entities[entity], p=world.properties[prop])
    return {
        "question": question,
        "choices": ["yes", "no"],
        "answer_index": answer_index,
        "answer": ["yes", "no"][answer_index],
        "rationales": _rationales(world, [(entity, prop)], rng),
        "facts": _facts(world, entity, prop),
    }


def _choice_row(world: _World, pool: dict[int, tuple[list[int], list[int]]], rng: random.Random) -> dict | None:
    """Which of 3-4 properties an entity has (exactly one); None when the pool cannot supply that.

    Options are properties rather than entities so every answer string is frequent in train and a model
    that reads the rationale only has to pick the option it calls positive.
    """
    num_options = rng.choice((3, 4))
    candidates = [e for e, (pos, neg) in pool.items() if pos and len(neg) >= num_options - 1]
    if not candidates:
        return None
    entity = rng.choice(candidates)
    positives, negatives = pool[entity]
    options = [rng.choice(positives)] + rng.sample(negatives, num_options - 1)
    rng.shuffle(options)
    answer_index = next(i for i, p in enumerate(options) if world.truth(entity, p))
    choices = [world.properties[p] for p in options]
    facts = [fact for p in options for fact in _facts(world, entity, p)]
    return {
        "question": rng.choice(_CHOICE_QUESTIONS).format(e=world.entities[entity]),
        "choices": choices,
        "answer_index": answer_index,
        "answer": choices[answer_index],
        "rationales": _rationales(world, [(entity, p) for p in options], rng),
        "facts": list(dict.fromkeys(facts)),
    }


def _make_rows(
    world: _World,
    pairs: list[tuple[int, int]],
    count: int,
    split: str,
    spec: SyntheticTaskSpec,
    rng: random.Random,
) -> list[dict]:
    by_entity: dict[int, tuple[list[int], list[int]]] = {}
    for entity, prop in sorted(pairs):
        by_entity.setdefault(entity, ([], []))[0 if world.truth(entity, prop) else 1].append(prop)
    cycle = _cycle(pairs, rng)
    rows: list[dict] = []
    while len(rows) < count:
        row = _choice_row(world, by_entity, rng) if rng.random() < spec.choice_fraction else None
        row = row or _yesno_row(world, *next(cycle), rng)
        index = len(rows)
        qid = hashlib.sha1(f"{spec.seed}/{split}/{index}/{row['question']}".encode()).hexdigest()[:20]
        rows.append(
            {
                "id": f"synthetic-{split}-{index:05d}",
                "question": row["question"],
                "choices": row["choices"],
                "answer_index": row["answer_index"],
                "answer": row["answer"],
                "rationales": row["rationales"],
                "rationale_source": RATIONALE_SOURCE,
                "facts": row["facts"],
                "qid": qid,
            }
        )
    return rows


def _make_passages(world: _World) -> list[dict]:
    """One paragraph per entity and two per category (what it is / is not), ids shaped like '<doc>_<para>'."""
    passages: list[dict] = []
    for index, name in enumerate(world.entities):
        category = world.categories[world.entity_category[index]]
        text = _PASSAGE_TEMPLATE.format(e=name, c=category)
        passages.append({"id": f"{100000 + index}_0", "title": name, "text": text})
    for index, category in enumerate(world.categories):
        row = world.table[index]
        for para, value in enumerate((True, False)):
            props = [p for p, v in zip(world.properties, row, strict=True) if v is value]
            listed = ", ".join(props[:-1]) + " and " + props[-1] if len(props) > 1 else props[0]
            text = f"{category}s are {'' if value else 'not '}{listed}."
            passages.append({"id": f"{200000 + index}_{para}", "title": category, "text": text})
    return passages


def generate_synthetic_task(spec: SyntheticTaskSpec) -> SyntheticTask:
    """Build the whole task in memory from the spec alone (no global random state)."""
    rng = random.Random(spec.seed)
    world = _make_world(spec, rng)
    train_pairs, dev_pairs = _split_pairs(world, spec, rng)
    train = _make_rows(world, train_pairs, spec.num_train, "train", spec, rng)
    dev = _make_rows(world, dev_pairs, spec.num_dev, "dev", spec, rng)
    return SyntheticTask(spec=spec, train=train, dev=dev, passages=_make_passages(world))


def write_synthetic_task(spec: SyntheticTaskSpec, out_dir: Path) -> dict[str, Path]:
    """Write train/dev/passages .jsonl.gz into out_dir and return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = generate_synthetic_task(spec)
    paths = {name: out_dir / f"{name}.jsonl.gz" for name in ("train", "dev", "passages")}
    for name, rows in (("train", task.train), ("dev", task.dev), ("passages", task.passages)):
        write_jsonl_gz(rows, paths[name])
    return paths


def main(argv: list[str] | None = None) -> None:
    defaults = SyntheticTaskSpec()
    parser = argparse.ArgumentParser(description="Write the synthetic reasoning task as .jsonl.gz files.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-entities", type=int, default=defaults.num_entities)
    parser.add_argument("--num-categories", type=int, default=defaults.num_categories)
    parser.add_argument("--num-properties", type=int, default=defaults.num_properties)
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-dev", type=int, default=defaults.num_dev)
    parser.add_argument("--choice-fraction", type=float, default=defaults.choice_fraction)
    parser.add_argument("--dev-properties-per-entity", type=int, default=defaults.dev_properties_per_entity)
    args = parser.parse_args(argv)
    spec = SyntheticTaskSpec(
        num_entities=args.num_entities,
        num_categories=args.num_categories,
        num_properties=args.num_properties,
        num_train=args.num_train,
        num_dev=args.num_dev,
        seed=args.seed,
        choice_fraction=args.choice_fraction,
        dev_properties_per_entity=args.dev_properties_per_entity,
    )
    for name, path in write_synthetic_task(spec, args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
