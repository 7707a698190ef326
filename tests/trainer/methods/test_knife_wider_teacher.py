"""A KNIFE teacher wider than its student (t5-mini, d_model 128 → t5-tiny, d_model 64), with real DeepSpeed engines
in this process (a one-rank gloo group): refused unless output distributions only are aligned or a learned
projection maps the student's states to the teacher's width; the projection trains, checkpoints and stays out of
the exported model."""

import random
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from trainer.checkpoint_io import LocalCheckpointIO
from trainer.config.loader import load_config
from trainer.data.example import QAExample
from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import load_splits
from trainer.loop import Trainer
from trainer.methods.knife.method import KnifeStudent
from trainer.methods.registry import method_class
from trainer.models.factory import build_model, build_model_config, build_tokenizer
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy

EXAMPLES = [
    QAExample(id=f"q{i}", question=f"Can fish {i} climb trees?", choices=("yes", "no"), answer_index=i % 2,
              facts=("Fish have no legs.", f"Tree {i} is tall."))
    for i in range(4)
]  # fmt: skip


def save_teacher(directory: Path, corpus: list[str], preset: str = "t5-mini") -> Path:
    """A randomly initialised teacher of the given preset with an offline tokenizer, saved as an HF directory."""
    cfg = load_config(overrides=[f"model.name={preset}", "model.tokenizer_vocab_size=300"])
    tokenizer = build_tokenizer(cfg.model, lambda: corpus, broadcast=lambda x: x)
    torch.manual_seed(0)
    build_model(cfg.model, build_model_config(cfg.model, tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher"), tokenizer_corpus(EXAMPLES * 3))


def student(teacher: Path, *overrides: str, seed: int = 0):
    """A configured one-rank strategy, the set-up KNIFE student method and a fresh student model."""
    cfg = load_config(
        overrides=["method.name=knife_student", f"method.knife.teacher={teacher}", "method.knife.teacher_zero_stage=0",
                   "run.num_workers=1", "optim.micro_batch_size=4", "optim.lr=0.01", *overrides]
    )  # fmt: skip
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    tokenizer = build_tokenizer(cfg.model, list, broadcast=lambda x: x, source=method_class(cfg).tokenizer_source(cfg))
    method = KnifeStudent(cfg, tokenizer)
    model_config = build_model_config(cfg.model, tokenizer)
    strategy.configure(model_config.d_model)
    torch.manual_seed(seed)
    method.setup(strategy, model_config)
    return strategy, method, build_model(cfg.model, model_config)


def batch(method: KnifeStudent) -> dict[str, torch.Tensor]:
    return method.collate([f for ex in EXAMPLES for f in method.train_features(ex, random.Random(0))])


def test_state_alignment_with_a_wider_teacher_needs_the_projection(wide_teacher: Path) -> None:
    with pytest.raises(ValueError, match="teacher d_model 128 != student d_model 64") as error:
        student(wide_teacher)
    assert "method.knife.projection=true" in str(error.value)
    assert "method.knife.output_loss=kl method.knife.lambda_in=0" in str(error.value)
    with pytest.raises(ValueError, match="d_model"):  # KD-out as MSE still aligns decoder states
        student(wide_teacher, "method.knife.lambda_in=0")
    with pytest.raises(ValueError, match="nothing to project"):
        student(wide_teacher, "method.knife.projection=true", "method.knife.lambda_in=0", "method.knife.output_loss=kl")


def test_a_wider_teacher_distils_output_distributions_without_projection(wide_teacher: Path) -> None:
    _, method, model = student(wide_teacher, "method.knife.output_loss=kl", "method.knife.lambda_in=0")
    assert method.auxiliary_modules() == {}
    parts = method.loss(model.train(), batch(method))
    assert parts["kd_in_loss"] == 0 and parts["kd_out_loss"] > 0 and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    assert model.lm_head.weight.grad is not None or model.shared.weight.grad is not None


def test_projection_gets_gradients_and_the_teacher_none(wide_teacher: Path) -> None:
    _, method, model = student(wide_teacher, "method.knife.projection=true")
    projection = method.auxiliary_modules()[KnifeStudent.PROJECTION]
    assert {name: tuple(p.weight.shape) for name, p in projection.items()} == {
        "encoder": (128, 64),
        "decoder": (128, 64),
    }
    parts = method.loss(model.train(), batch(method))
    assert parts["kd_in_loss"] > 0 and parts["kd_out_loss"] > 0 and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    for linear in projection.values():
        assert linear.weight.grad is not None and torch.count_nonzero(linear.weight.grad) > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_projection_trains_in_the_engine_round_trips_its_checkpoint_and_is_not_exported(
    wide_teacher: Path, tmp_path: Path
) -> None:
    strategy, method, model = student(wide_teacher, "method.knife.projection=true")
    engine = strategy.prepare(model, method.auxiliary_modules())
    projection = method.auxiliary_modules()[KnifeStudent.PROJECTION]
    before = {name: linear.weight.detach().clone() for name, linear in projection.items()}
    for _ in range(3):  # the warmup schedule starts at lr 0 for two steps
        parts = method.loss(engine, batch(method))
        assert torch.isfinite(parts["loss"])
        assert strategy.backward_step(engine, parts["loss"])
    trained = {name: linear.weight.detach().clone() for name, linear in projection.items()}
    assert all(not torch.equal(before[name], trained[name]) for name in trained)  # the optimizer stepped it
    strategy.save_checkpoint(engine, tmp_path / "ckpt", {"global_step": 3})

    fresh_strategy, fresh_method, fresh_model = student(wide_teacher, "method.knife.projection=true", seed=7)
    fresh_engine = fresh_strategy.prepare(fresh_model, fresh_method.auxiliary_modules())
    fresh_projection = fresh_method.auxiliary_modules()[KnifeStudent.PROJECTION]
    assert not torch.equal(fresh_projection["encoder"].weight, trained["encoder"])
    assert fresh_strategy.load_checkpoint(fresh_engine, tmp_path / "ckpt") == {"global_step": 3}
    for name, weight in trained.items():
        torch.testing.assert_close(fresh_projection[name].weight.detach(), weight, rtol=0, atol=0)

    export = tmp_path / "export"
    strategy.export_model(engine, method.tokenizer, export)
    saved = load_file(export / "model.safetensors")
    assert saved and not any(key.startswith(KnifeStudent.PROJECTION) for key in saved)
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and loaded.config.d_model == 64


def test_wider_teacher_student_fits_under_zero3_with_projection(tiny_config, tmp_path: Path) -> None:
    """The whole loop: ZeRO-3 partitions the projection with the student, and the export leaves it out."""
    cfg = tiny_config("data.max_train_examples=16", "data.max_dev_examples=8")
    train = load_splits(cfg.data, cfg.run.seed).train
    teacher = save_teacher(tmp_path / "teacher", tokenizer_corpus(train))
    cfg = tiny_config(
        "data.max_train_examples=16", "data.max_dev_examples=8", "method.name=knife_student",
        f"method.knife.teacher={teacher}", "method.knife.projection=true", "ds.template=zero3",
        "optim.max_steps=3", "tracking.log_every=1", "tracking.log_model=false",
    )  # fmt: skip
    result = Trainer(cfg, LocalCheckpointIO(Path(cfg.run.output_dir) / cfg.run.name / "checkpoints")).fit()
    assert result.global_step == 3
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    kd_in = [m.value for m in client.get_metric_history(result.mlflow_run_id, "train/kd_in_loss")]
    assert len(kd_in) == 3 and all(v > 0 and v == v for v in kd_in)
    kd_in_weighted = [m.value for m in client.get_metric_history(result.mlflow_run_id, "train/kd_in_loss_weighted")]
    assert kd_in_weighted == pytest.approx([cfg.method.knife.lambda_in * v for v in kd_in])
    saved = load_file(result.export_dir / "model.safetensors")
    assert not any(key.startswith(KnifeStudent.PROJECTION) for key in saved)
    assert AutoModelForSeq2SeqLM.from_pretrained(result.export_dir).config.d_model == 64
