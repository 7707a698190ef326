"""Fixtures shared by the whole suite: environment hygiene, the shared data, small configs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.config.loader import load_config
from trainer.config.schema import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REASONDISTILL_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True)
def _restore_tracking_uri_env() -> Iterator[None]:
    """mlflow.set_tracking_uri in a test exports MLFLOW_TRACKING_URI; left behind, every subprocess a later test
    starts would log into that test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "strategyqa" / "train.jsonl.gz").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set REASONDISTILL_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture
def tiny_config(tmp_path: Path, shared_data: Path):
    """A config factory for seconds-long runs on StrategyQA with a local SQLite MLflow store."""

    def make(*overrides: str) -> ExperimentConfig:
        base = [
            f"data.data_dir={shared_data}",
            "data.max_train_examples=64",
            "data.max_dev_examples=16",
            "data.max_input_length=64",
            "data.max_target_length=8",
            "model.tokenizer_vocab_size=600",
            "optim.max_steps=4",
            "optim.micro_batch_size=4",
            "tracking.log_every=2",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.experiment=tests",
            f"run.output_dir={tmp_path / 'runs'}",
            "run.num_workers=1",
        ]
        return load_config(overrides=[*base, *overrides])

    return make


KARD_TEST_OVERRIDES = (
    "method.name=kard",
    "data.dataset=synthetic_kb",
    "data.max_train_examples=160",
    "data.max_dev_examples=24",
    "data.rationale_filter=parse",
    "method.kard.candidates=8",
    "method.reranker.candidates_per_query=6",
    "method.reranker.eval_k=[1,2]",
)


@pytest.fixture(scope="session")
def kard_knowledge(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExperimentConfig, Path]:
    """A real knowledge dataset (embedded tantivy index over the synthetic_kb corpus), built once per session."""
    from trainer.kard.prepare import prepare_knowledge

    root = tmp_path_factory.mktemp("kard")
    cfg = load_config(overrides=[*KARD_TEST_OVERRIDES, f"run.output_dir={root}"])
    build = prepare_knowledge(cfg)
    wired = cfg.model_copy(
        update={
            "method": cfg.method.model_copy(
                update={"kard": cfg.method.kard.model_copy(update={"knowledge": str(build.path)})}
            )
        }
    )
    return wired, build.path


@pytest.fixture(scope="session")
def corpus() -> list[dict[str, str]]:
    """400 deterministic passages, for the retrieval core's and the retrieval service's tests alike."""
    from support.retrieval_corpus import make_corpus

    return make_corpus(400)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus: list[dict[str, str]]) -> Path:
    from support.retrieval_corpus import write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("corpus") / "passages.jsonl", corpus)


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A real tantivy index over `corpus_file`, built once per session."""
    from retrieval_core.backends.tantivy_backend import TantivyBackend
    from retrieval_core.documents import iter_passages

    path = tmp_path_factory.mktemp("corpus_index") / "index"
    with TantivyBackend(path, create=True) as backend:
        backend.index_documents(iter_passages(corpus_file))
    return path
