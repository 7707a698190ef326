"""A run stopped after a mid-epoch checkpoint and resumed equals the uninterrupted run to the bit (losses, gradient
norms, weights; with dropout on and gradient accumulation), and the resumed run collates only the batches it
trains: the sampler starts at the checkpoint's batch instead of the loop skipping collated ones."""

import dataclasses
import math
from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

import trainer.loop
from trainer.checkpoint_io import LocalCheckpointIO
from trainer.loop import Trainer
from trainer.methods.base import Method
from trainer.models import presets

STEPS, SAVED_AT, ACCUMULATION = 7, 4, 2


class Interrupted(Exception):
    """Stands for the crash of a worker after its step-4 checkpoint."""


def fit(cfg):
    return Trainer(cfg, LocalCheckpointIO(Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")).fit()


def history(cfg, run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_resume_starts_at_its_batch_and_matches_the_uninterrupted_run(tiny_config, monkeypatch) -> None:
    tiny = presets.PRESETS["t5-tiny"]
    with_dropout = dataclasses.replace(tiny.architecture, dropout_rate=0.1)
    monkeypatch.setitem(presets.PRESETS, "t5-tiny", dataclasses.replace(tiny, architecture=with_dropout))
    collated: list[int] = []
    collate = Method.collate

    def counting_collate(self: Method, features: list) -> dict:
        if "labels" in features[0]:  # a training batch (dev features carry no labels)
            collated.append(len(features))
        return collate(self, features)

    monkeypatch.setattr(Method, "collate", counting_collate)
    settings = (
        "data.max_train_examples=24",  # 6 micro-batches an epoch: the checkpoint falls in epoch 1, batch 2
        f"optim.max_steps={STEPS}",
        f"optim.gradient_accumulation_steps={ACCUMULATION}",
        "optim.weight_decay=0.1",
        "run.save_every=2",
        "tracking.log_every=1",
        "tracking.log_model=false",
    )
    straight_cfg = tiny_config(*settings, "run.name=straight")
    straight = fit(straight_cfg)
    assert len(collated) == STEPS * ACCUMULATION
    batches_per_epoch = math.ceil(24 / straight_cfg.optim.micro_batch_size)
    assert divmod(SAVED_AT * ACCUMULATION, batches_per_epoch) == (1, 2)  # the checkpoint: epoch 1, batch 2

    cfg = tiny_config(*settings, "run.name=resumed")
    real_failpoint = trainer.loop.failpoint

    def crash_after_checkpoint(name: str, **context) -> None:
        if name == "train.step" and context["step"] == SAVED_AT + 1:
            raise Interrupted
        real_failpoint(name, **context)

    monkeypatch.setattr(trainer.loop, "failpoint", crash_after_checkpoint)
    with pytest.raises(Interrupted):
        fit(cfg)
    monkeypatch.setattr(trainer.loop, "failpoint", real_failpoint)
    collated.clear()
    resumed = fit(cfg)
    assert resumed.mlflow_run_id != straight.mlflow_run_id and resumed.global_step == STEPS
    assert len(collated) == (STEPS - SAVED_AT) * ACCUMULATION  # nothing before the checkpoint's batch

    for key in ("train/loss", "train/grad_norm"):
        logged = history(cfg, resumed.mlflow_run_id, key)
        assert [step for step, _ in logged] == list(range(1, STEPS + 1)), key
        assert logged == history(cfg, straight.mlflow_run_id, key), key
    assert all(0.0 < norm < math.inf for _, norm in history(cfg, resumed.mlflow_run_id, "train/grad_norm"))
    assert resumed.metrics["dev/accuracy"] == straight.metrics["dev/accuracy"]
    want = load_file(straight.export_dir / "model.safetensors")
    got = load_file(resumed.export_dir / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(got[k].equal(want[k]) for k in want), "weights differ from the uninterrupted run"
