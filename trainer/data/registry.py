"""Dataset registry: a name in the config maps to a loader that returns train and dev splits."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.config.schema import DataConfig
from trainer.data.example import DataError, QAExample
from trainer.data.jsonl import read_examples
from trainer.data.synthetic import SyntheticTaskSpec, generate_synthetic_task
from trainer.data.synthetic_kb import SyntheticKBSpec, generate_synthetic_kb_task, write_corpus

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DatasetSplits:
    train: list[QAExample]
    dev: list[QAExample]


SplitLoader = Callable[[DataConfig], DatasetSplits]
_LOADERS: dict[str, SplitLoader] = {}


def register_dataset(name: str) -> Callable[[SplitLoader], SplitLoader]:
    def decorate(loader: SplitLoader) -> SplitLoader:
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _LOADERS[name] = loader
        return loader

    return decorate


def registered_datasets() -> list[str]:
    return sorted(_LOADERS)


def data_root(cfg: DataConfig) -> Path:
    """The shared data folder: config, then $REASONDISTILL_DATA_DIR, then ../shared/data beside the repo."""
    return Path(cfg.data_dir or os.environ.get("REASONDISTILL_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def hash_split(examples: list[QAExample], dev_fraction: float) -> DatasetSplits:
    """Hold out a dev split by id hash, so it is stable across runs, ranks and row order."""
    ranked = sorted(examples, key=lambda ex: hashlib.sha1(ex.id.encode()).hexdigest())
    n_dev = max(1, round(len(ranked) * dev_fraction))
    dev_ids = {ex.id for ex in ranked[:n_dev]}
    return DatasetSplits(
        train=[ex for ex in examples if ex.id not in dev_ids], dev=[ex for ex in examples if ex.id in dev_ids]
    )


def _shared_file(cfg: DataConfig, relative: str) -> Path:
    path = data_root(cfg) / relative
    if not path.is_file():
        raise DataError(
            f"dataset {cfg.dataset!r}: {path} not found; set data.data_dir or REASONDISTILL_DATA_DIR "
            "to the folder holding the shared data"
        )
    return path


@register_dataset("strategyqa")
def _strategyqa(cfg: DataConfig) -> DatasetSplits:
    """StrategyQA ships one labelled file (KARD release); dev is held out from it."""
    return hash_split(read_examples(_shared_file(cfg, "strategyqa/train.jsonl.gz")), cfg.dev_fraction)


@register_dataset("obqa")
def _obqa(cfg: DataConfig) -> DatasetSplits:
    return DatasetSplits(
        train=read_examples(_shared_file(cfg, "obqa/train.jsonl.gz")),
        dev=read_examples(_shared_file(cfg, "obqa/dev.jsonl.gz")),
    )


@register_dataset("medqa")
def _medqa(cfg: DataConfig) -> DatasetSplits:
    """Only MedQA dev is available here; a user with the train file passes it as data.train_path."""
    if cfg.train_path:
        dev = read_examples(_shared_file(cfg, "medqa/dev.jsonl.gz"))
        return DatasetSplits(train=read_examples(cfg.train_path), dev=dev)
    return hash_split(read_examples(_shared_file(cfg, "medqa/dev.jsonl.gz")), cfg.dev_fraction)


@register_dataset("jsonl")
def _generic_jsonl(cfg: DataConfig) -> DatasetSplits:
    """Any file in the shared schema; without a dev file, dev is held out by id hash."""
    if not cfg.train_path:
        raise DataError("dataset 'jsonl' needs data.train_path")
    train = read_examples(cfg.train_path)
    if cfg.dev_path:
        return DatasetSplits(train=train, dev=read_examples(cfg.dev_path))
    return hash_split(train, cfg.dev_fraction)


@register_dataset("synthetic")
def _synthetic(cfg: DataConfig) -> DatasetSplits:
    """The seeded synthetic reasoning task (trainer.data.synthetic), generated in memory."""
    task = generate_synthetic_task(SyntheticTaskSpec(seed=cfg.synthetic_seed))
    name = f"synthetic(seed={cfg.synthetic_seed})"
    return DatasetSplits(
        train=[QAExample.from_row(row, where=f"{name}:train:{i}") for i, row in enumerate(task.train)],
        dev=[QAExample.from_row(row, where=f"{name}:dev:{i}") for i, row in enumerate(task.dev)],
    )


@register_dataset("synthetic_kb")
def _synthetic_kb(cfg: DataConfig) -> DatasetSplits:
    """The seeded knowledge-intensive task (trainer.data.synthetic_kb): dev entities are known only to the corpus."""
    task = generate_synthetic_kb_task(SyntheticKBSpec(seed=cfg.synthetic_seed))
    name = f"synthetic_kb(seed={cfg.synthetic_seed})"
    return DatasetSplits(
        train=[QAExample.from_row(row, where=f"{name}:train:{i}") for i, row in enumerate(task.train)],
        dev=[QAExample.from_row(row, where=f"{name}:dev:{i}") for i, row in enumerate(task.dev)],
    )


def default_corpus(cfg: DataConfig, cache_dir: Path) -> Path | None:
    """The knowledge corpus a dataset retrieves from unless retrieval.corpus names one: the shared Wikipedia
    passages for StrategyQA and OBQA (as KARD), the generated passages for synthetic_kb, none otherwise (MedQA's
    PubMed and user datasets name theirs)."""
    if cfg.dataset in ("strategyqa", "obqa"):
        return data_root(cfg) / "wikipedia" / "passages.jsonl.gz"
    if cfg.dataset == "synthetic_kb":
        return write_corpus(SyntheticKBSpec(seed=cfg.synthetic_seed), cache_dir / "corpora")
    return None


def load_splits(cfg: DataConfig, seed: int) -> DatasetSplits:
    """Load the configured dataset, then apply the low-resource fraction and size caps (seeded)."""
    if cfg.dataset not in _LOADERS:
        raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; known: {', '.join(registered_datasets())}")
    splits = _LOADERS[cfg.dataset](cfg)
    train = list(splits.train)
    if cfg.train_fraction < 1.0:
        keep = max(1, round(len(train) * cfg.train_fraction))
        kept_ids = {ex.id for ex in random.Random(seed).sample(train, keep)}
        train = [ex for ex in train if ex.id in kept_ids]
    if cfg.max_train_examples:
        train = train[: cfg.max_train_examples]
    dev = splits.dev[: cfg.max_dev_examples] if cfg.max_dev_examples else list(splits.dev)
    if not train or not dev:
        raise DataError(f"dataset {cfg.dataset!r}: empty split (train {len(train)}, dev {len(dev)})")
    return DatasetSplits(train=train, dev=dev)
