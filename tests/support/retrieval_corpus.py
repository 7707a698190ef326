"""A deterministic corpus for the retrieval tests: Latin-script passages with skewed term frequencies."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "omega",
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "city",
    "village",
    "castle",
    "bridge",
    "tower",
    "garden",
    "library",
    "museum",
    "engine",
    "rocket",
    "planet",
    "comet",
    "galaxy",
    "atom",
    "molecule",
    "protein",
    "enzyme",
    "gene",
    "cell",
    "virus",
    "bacteria",
    "fungus",
    "algae",
    "coral",
    "whale",
    "eagle",
    "falcon",
    "tiger",
    "lion",
    "wolf",
    "bear",
    "violin",
    "piano",
    "guitar",
    "drum",
    "opera",
    "ballet",
    "poem",
    "novel",
    "theorem",
    "proof",
    "lemma",
    "matrix",
    "vector",
    "tensor",
    "graph",
    "tree",
]


def make_corpus(n: int, seed: int = 7) -> list[dict[str, str]]:
    """Deterministic Latin-script passages with skewed term frequencies and varied lengths."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]
    rows = []
    for i in range(n):
        title = " ".join(rng.choices(WORDS, weights, k=rng.randint(1, 3))).title()
        text = " ".join(rng.choices(WORDS, weights, k=rng.randint(3, 80)))
        rows.append({"id": f"doc-{i}", "title": title, "text": text})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
