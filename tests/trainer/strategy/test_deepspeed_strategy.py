"""Real DeepSpeed engines in this process (a one-rank gloo group); the 2-rank cases live in test_zero3_torchrun."""

from pathlib import Path

import mlflow
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from tests.trainer.strategy.strategy_setup import configured_strategy
from trainer.checkpoint_io import LocalCheckpointIO
from trainer.data.formatting import format_question
from trainer.data.registry import load_splits
from trainer.loop import Trainer
from trainer.models.factory import build_model, count_parameters


def fit(cfg):
    checkpoints = LocalCheckpointIO(Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")
    return Trainer(cfg, checkpoints).fit()


def make_engine(cfg):
    strategy, tokenizer, model_config = configured_strategy(cfg)
    return strategy, strategy.prepare(build_model(cfg.model, model_config)), tokenizer


def batch_for(tokenizer):
    enc = tokenizer(["question: is water wet? options: (A) yes (B) no"] * 2, return_tensors="pt", padding=True)
    labels = tokenizer(["yes", "no"], return_tensors="pt", padding=True)["input_ids"]
    return {**enc, "labels": labels.masked_fill(labels == tokenizer.pad_token_id, -100)}


def test_checkpoint_round_trip_is_exact(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("ds.template=zero2")
    strategy, engine, tokenizer = make_engine(cfg)
    batch = batch_for(tokenizer)
    for _ in range(3):
        assert strategy.backward_step(engine, engine(**batch).loss)
    strategy.save_checkpoint(engine, tmp_path / "ckpt", {"global_step": 3})
    expected = {k: v.clone() for k, v in engine.module.state_dict().items()}
    expected_lr = strategy.current_lr(engine)

    torch.manual_seed(123)  # a differently initialised model must come back identical
    _, fresh, _ = make_engine(cfg.model_copy(update={"run": cfg.run.model_copy(update={"seed": 7})}))
    assert strategy.load_checkpoint(fresh, tmp_path / "ckpt") == {"global_step": 3}
    for key, value in fresh.module.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert strategy.current_lr(fresh) == expected_lr
    # The optimizer state came back too: one more identical step gives identical weights.
    strategy.backward_step(engine, engine(**batch).loss)
    strategy.backward_step(fresh, fresh(**batch).loss)
    for (key, a), b in zip(engine.module.state_dict().items(), fresh.module.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_gradient_accumulation_steps_the_optimizer_on_boundaries(tiny_config) -> None:
    strategy, engine, tokenizer = make_engine(tiny_config("optim.gradient_accumulation_steps=3"))
    batch = batch_for(tokenizer)
    stepped = [strategy.backward_step(engine, engine(**batch).loss) for _ in range(6)]
    assert stepped == [False, False, True, False, False, True]
    assert engine.global_steps == 2


def test_fit_exports_a_loadable_model_that_reproduces_predictions(tiny_config) -> None:
    cfg = tiny_config("optim.max_steps=6", "optim.lr=0.003")
    result = fit(cfg)
    assert result.global_step == 6
    assert 0.0 <= result.metrics["dev/accuracy"] <= 1.0

    export = result.export_dir
    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    dev = load_splits(cfg.data, cfg.run.seed).dev
    enc = tokenizer([format_question(ex) for ex in dev], return_tensors="pt", padding=True)
    generated = model.generate(**enc, max_new_tokens=cfg.data.max_target_length)
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert texts == [p["generated"] for p in result.predictions]

    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["train/steps"] == 6
    assert "data/ftr_answer_leak_rate" not in run.data.metrics  # I→O reads no FTR
    assert run.data.params["ds.template"] == "zero2"


def test_second_fit_resumes_same_run(tiny_config) -> None:
    first = fit(tiny_config("optim.max_steps=4"))
    second = fit(tiny_config("optim.max_steps=6"))
    assert second.mlflow_run_id == first.mlflow_run_id
    client = mlflow.MlflowClient(tiny_config().tracking.tracking_uri)
    run = client.get_run(second.mlflow_run_id)
    assert run.data.tags["resumed_from_step"] == "4"
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(second.mlflow_run_id, "train/loss")]
    assert steps == [2, 4, 6]


def test_bf16_training_runs_and_exports(tiny_config) -> None:
    result = fit(tiny_config("ds.precision=bf16", "optim.max_steps=2", "tracking.log_model=false"))
    assert result.model_uri is None
    model = AutoModelForSeq2SeqLM.from_pretrained(result.export_dir)
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["ft_ior", "ft_iro", "multitask"])
def test_rationale_methods_train_end_to_end(tiny_config, name: str) -> None:
    cfg = tiny_config(
        f"method.name={name}", "optim.max_steps=2", "tracking.log_model=false", "data.max_rationale_length=32"
    )
    result = fit(cfg)
    assert result.global_step == 2 and len(result.predictions) == 16
    metrics = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(result.mlflow_run_id).data.metrics
    assert metrics["data/num_train_ftrs"] == 64  # one human-facts FTR per training question
    assert 0.0 <= metrics["data/ftr_answer_leak_rate"] <= 1.0 and "data/ftr_states_answer_rate" in metrics


@pytest.mark.slow
def test_zero3_with_cpu_offload_trains_and_exports(tiny_config) -> None:
    """Offload uses DeepSpeedCPUAdam, JIT-compiled on first use (~2 min, cached in TORCH_EXTENSIONS_DIR)."""
    cfg = tiny_config("ds.template=zero3", "ds.offload_optimizer=true", "ds.offload_param=true", "optim.max_steps=2")
    result = fit(cfg)
    assert result.global_step == 2
    ds_config = mlflow.artifacts.load_dict(
        f"{mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(result.mlflow_run_id).info.artifact_uri}"
        "/config/deepspeed.json"
    )
    assert ds_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds_config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert AutoModelForSeq2SeqLM.from_pretrained(result.export_dir).config.d_model == 64


def test_zero3_builds_the_model_already_partitioned(tiny_config) -> None:
    cfg = tiny_config("ds.template=zero3")
    strategy, tokenizer, model_config = configured_strategy(cfg)
    with strategy.partitioned_init(strategy.resolved_config):
        assert is_deepspeed_zero3_enabled()
        model = build_model(cfg.model, model_config)
    assert not is_deepspeed_zero3_enabled()  # the flag does not leak into later model builds
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())  # never materialised whole
    reference = build_model(cfg.model, model_config)
    assert count_parameters(model) == count_parameters(reference) == sum(p.numel() for p in reference.parameters())
    engine = strategy.prepare(model)
    batch = batch_for(tokenizer)
    assert strategy.backward_step(engine, engine(**batch).loss)
