"""Tokenised training features, built once per fingerprint and reused from an Arrow file by every later run.

A run's features depend on its examples, its method (formatting, lengths, rationale choice), its tokenizer and the
code that builds them, never on the rank, the stage or (unless drawn at random) the seed. The fingerprint names all
of that, so ranks of a node, the stages of a pipeline, the seeds of a benchmark and a resubmitted job share one
build:

    <cache_dir>/<digest>/manifest.json     the fingerprint in clear, and whether the features drew on the seed
    <cache_dir>/<digest>/features.arrow    features that do not depend on the seed
    <cache_dir>/<digest>/seed-<n>.arrow    one file per seed for features that do (e.g. one LLM rationale at random)

Whoever takes `<digest>.lock` first builds (`datasets.Dataset.map(batched=True)` writing straight to the Arrow
file); everyone else waits for the lock and memory-maps the result. Files appear by atomic rename, so a crashed
build never leaves a half-written cache. Whether features depend on the seed is not declared but observed: the
build's random generator records whether it was drawn from.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.data.example import QAExample

if TYPE_CHECKING:  # `datasets` (~0.5 s with pandas) is imported by the functions that build or load features
    import datasets
    from transformers import PreTrainedTokenizerBase

Features = dict[str, Any]
Encoder = Callable[[QAExample, random.Random], list[Features]]
_MANIFEST = "manifest.json"
_BUILD_BATCH = 256


@dataclass(frozen=True)
class CachedFeatures:
    """A run's training features (a memory-mapped `datasets.Dataset`) and where they came from."""

    dataset: datasets.Dataset
    digest: str  # the fingerprint's digest, plus the seed when the features depend on it
    path: Path
    built: bool  # False: loaded from an earlier build

    def __len__(self) -> int:
        return len(self.dataset)


class _RecordingRandom(random.Random):
    """A random.Random that notes whether anything drew from it; its stream is random.Random's own."""

    drawn = False

    def random(self) -> float:
        self.drawn = True
        return super().random()

    def getrandbits(self, k: int) -> int:
        self.drawn = True
        return super().getrandbits(k)


def digest_of(value: Any) -> str:
    """A stable hex digest of a JSON-able value (dict keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def examples_digest(examples: Sequence[QAExample]) -> str:
    """Content and order of the examples: a changed file, fraction or cap changes it."""
    return digest_of([[e.id, e.question, e.choices, e.answer_index, e.rationales, e.facts, e.extra] for e in examples])


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's identity: its full serialisation (vocabulary, merges, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return digest_of([type(tokenizer).__name__, backend.to_str(), tokenizer.special_tokens_map])
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        files = sorted(Path(directory).iterdir())
        return digest_of({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})


def source_digest(paths: Sequence[Path]) -> str:
    """The code that builds features: editing a formatter or a method invalidates what it built."""
    return digest_of({str(p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(set(paths))})


def load_or_build(
    cache_dir: Path,
    fingerprint: Mapping[str, Any],
    examples: Sequence[QAExample],
    encode: Encoder,
    seed: int,
) -> CachedFeatures:
    """The features of `examples` under `fingerprint`, built by `encode(example, rng)` in example order with one
    `random.Random(seed)` (exactly the features an in-memory loop would produce), or loaded if built before."""
    import datasets

    key = digest_of(fingerprint)
    entry = cache_dir / key
    entry.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"{key}.lock"):
        manifest = _read_manifest(entry)
        if manifest is not None:
            target = entry / (f"seed-{seed}.arrow" if manifest["seeded"] else "features.arrow")
            if target.is_file():
                return _loaded(target, key, manifest["seeded"], seed, built=False)
        rng = _RecordingRandom(seed)
        schema = _probe_schema(examples, encode, rng)
        if schema is None:  # not one feature: nothing worth caching, the caller reports it
            return CachedFeatures(datasets.Dataset.from_dict({}), key[:16], entry, built=True)
        scratch = entry / f".building-{uuid.uuid4().hex}.arrow"
        try:
            dataset = _build(examples, encode, rng, schema, scratch)
            seeded = rng.drawn if manifest is None else manifest["seeded"]
            target = entry / (f"seed-{seed}.arrow" if seeded else "features.arrow")
            del dataset  # release the memory map before the file moves
            os.replace(scratch, target)
        finally:
            scratch.unlink(missing_ok=True)
        if manifest is None:
            _write_manifest(entry, {"fingerprint": fingerprint, "seeded": seeded})
        return _loaded(target, key, seeded, seed, built=True)


def _probe_schema(examples: Sequence[QAExample], encode: Encoder, rng: random.Random) -> datasets.Features | None:
    """The Arrow schema of the first example's features (a copy of the generator, so the build's stream is
    untouched). Declared up front: inferring it per batch fails when a batch yields nothing or only empty lists."""
    import datasets

    probe = random.Random()
    probe.setstate(rng.getstate())
    for example in examples:
        rows = encode(example, probe)
        if rows:
            return datasets.Features({key: _value_type([row[key] for row in rows]) for key in rows[0]})
    return None


def _value_type(values: list[Any]) -> Any:
    """A column's type from sample values (lists, dicts, scalars); token-id lists default to int64 when all empty."""
    import datasets

    sample = next((v for v in values if not (isinstance(v, list) and not v)), None)
    if isinstance(sample, dict):  # nested features (multitask's answer/explain pair) become Arrow structs
        return {key: _value_type([v[key] for v in values]) for key in sample}
    if isinstance(sample, list):
        return datasets.List(_value_type([item for v in values for item in v]))
    if sample is None and values and isinstance(values[0], list):
        return datasets.List(datasets.Value("int64"))
    for kind, arrow in ((bool, "bool"), (int, "int64"), (float, "float64"), (str, "string")):
        if isinstance(sample, kind):
            return datasets.Value(arrow)
    raise TypeError(f"cannot cache a feature value of type {type(sample).__name__}")


def _build(
    examples: Sequence[QAExample], encode: Encoder, rng: random.Random, schema: datasets.Features, path: Path
) -> datasets.Dataset:
    """One batched map over example indices, in order, in this process: the generator's stream is consumed exactly
    as a plain loop over the examples would."""
    import datasets

    def encode_batch(batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        rows = [feature for index in batch["example"] for feature in encode(examples[index], rng)]
        for row in rows:
            if row.keys() != schema.keys():
                raise ValueError(f"features with different keys in one build: {list(schema)} vs {list(row)}")
        return {key: [row[key] for row in rows] for key in schema}

    indices = datasets.Dataset.from_dict({"example": list(range(len(examples)))})
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per build would flood Ray job logs
    try:
        return indices.map(
            encode_batch,
            batched=True,
            batch_size=_BUILD_BATCH,
            remove_columns=["example"],
            features=schema,
            cache_file_name=str(path),
            load_from_cache_file=False,
            new_fingerprint=path.stem,  # ours, so `datasets` never hashes the closure
        )
    finally:
        if progress:
            datasets.enable_progress_bars()


def _loaded(path: Path, key: str, seeded: bool, seed: int, built: bool) -> CachedFeatures:
    import datasets

    digest = f"{key[:16]}-seed{seed}" if seeded else key[:16]
    return CachedFeatures(datasets.Dataset.from_file(str(path)), digest, path, built)


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    path = entry / _MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _write_manifest(entry: Path, manifest: dict[str, Any]) -> None:
    scratch = entry / f".{_MANIFEST}.{uuid.uuid4().hex}"
    scratch.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(scratch, entry / _MANIFEST)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock): ranks on a node, and nodes sharing a filesystem that honours it."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
