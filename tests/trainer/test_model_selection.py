"""Model selection on dev: TrainState.offer's rule, the export a checkpoint carries, and a real run (one-rank
DeepSpeed, real MLflow store) that exports and logs its best dev step, keeps the last step's model beside it, and
still has the selected model after resuming where the export directory is gone."""

import shutil
from pathlib import Path

import mlflow
import torch
from safetensors.torch import load_file

from trainer.checkpoint_io import LocalCheckpointIO
from trainer.loop import Trainer, TrainState
from trainer.model_selection import SELECTED_IN_CHECKPOINT, replace_dir, restore_selected, stash_selected


def offers(state: TrainState, accuracies: dict[int, float], always: bool = False) -> list[bool]:
    answers = []
    for step, accuracy in accuracies.items():
        state.global_step = step
        answers.append(state.offer(accuracy, always=always))
    return answers


def test_offer_keeps_the_best_accuracy_and_the_earlier_step_on_ties() -> None:
    state = TrainState()
    assert offers(state, {2: 0.5, 4: 0.7, 6: 0.7, 8: 0.6}) == [True, True, False, False]
    assert (state.best_step, state.best_score) == (4, 0.7)
    assert offers(state, {4: 0.7}) == [True]  # the selected step evaluated again (resumed at its end) stays selected
    assert offers(state, {10: 0.71}) == [True] and state.best_step == 10
    assert offers(state, {12: 0.1}, always=True) == [True] and (state.best_step, state.best_score) == (12, 0.1)


def test_a_checkpoint_carries_the_selected_export_back(tmp_path: Path) -> None:
    export, checkpoint = tmp_path / "export", tmp_path / "step_4"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"best")
    checkpoint.mkdir()
    assert not restore_selected(checkpoint, tmp_path / "elsewhere")
    stash_selected(export, checkpoint)
    assert (checkpoint / SELECTED_IN_CHECKPOINT / "model.safetensors").read_bytes() == b"best"

    (export / "model.safetensors").write_bytes(b"stale")
    (export / "extra.json").write_text("{}")
    assert restore_selected(checkpoint, None)  # other ranks only learn that it is there
    assert (export / "model.safetensors").read_bytes() == b"stale"
    assert restore_selected(checkpoint, export)
    assert sorted(p.name for p in export.iterdir()) == ["model.safetensors"]  # replaced whole, nothing stale left
    assert (export / "model.safetensors").read_bytes() == b"best"

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "a").write_text("new")
    replace_dir(fresh, export)
    assert not fresh.exists() and [p.name for p in export.iterdir()] == ["a"]


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The model weights DeepSpeed saved at a step (one rank, ZeRO-2: the whole module)."""
    states = torch.load(run_dir / "checkpoints" / f"step_{step}" / "checkpoint" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)  # fmt: skip
    return states["module"]


def assert_export_holds(export: Path, weights: dict[str, torch.Tensor]) -> None:
    exported = load_file(export / "model.safetensors")
    assert exported
    for key, value in exported.items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


def first_value_per_step(client: mlflow.MlflowClient, run_id: str, key: str) -> dict[int, float]:
    values: dict[int, float] = {}
    for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        values.setdefault(metric.step, metric.value)
    return values


def expected_best(history: dict[int, float]) -> int:
    best = max(history.values())
    return min(step for step, value in history.items() if value == best)


def test_fit_exports_and_logs_the_best_dev_step_and_keeps_it_across_a_resume(tiny_config) -> None:
    def fit(max_steps: int, log_model: bool):
        cfg = tiny_config("run.eval_every=2", "run.save_every=2", f"optim.max_steps={max_steps}",
                          f"tracking.log_model={str(log_model).lower()}")  # fmt: skip
        run_dir = Path(cfg.run.output_dir) / cfg.run.name
        return cfg, run_dir, Trainer(cfg, LocalCheckpointIO(run_dir / "checkpoints")).fit()

    cfg, run_dir, result = fit(6, log_model=True)
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    history = first_value_per_step(client, result.mlflow_run_id, "dev/accuracy")
    assert sorted(history) == [2, 4, 6]
    best = expected_best(history)
    assert result.metrics["dev/best_step"] == best and result.metrics["dev/best_accuracy"] == history[best]
    # A tiny model from scratch scores dev questions by their label prior, so accuracy ties and the earlier step
    # wins: this run selects an earlier model than its last one, which is the path under test.
    assert best < 6, history
    assert result.export_dir == run_dir / "export" and result.final_export_dir == run_dir / "export_final"
    assert_export_holds(result.export_dir, checkpoint_weights(run_dir, best))
    assert_export_holds(result.final_export_dir, checkpoint_weights(run_dir, 6))
    assert_export_holds(run_dir / "checkpoints" / "step_6" / SELECTED_IN_CHECKPOINT, checkpoint_weights(run_dir, best))

    assert result.model_uri == f"runs:/{result.mlflow_run_id}/model"
    assert result.final_model_uri == f"runs:/{result.mlflow_run_id}/model_final"
    for uri, export in ((result.model_uri, result.export_dir), (result.final_model_uri, result.final_export_dir)):
        logged = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=cfg.tracking.tracking_uri))
        [weights] = logged.rglob("model.safetensors")
        assert weights.read_bytes() == (export / "model.safetensors").read_bytes(), uri
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    assert metrics["dev/best_step"] == best and metrics["dev/best_accuracy"] == history[best]

    # Resume on a "new node": the local exports are gone; the checkpoint brings the selected model back.
    shutil.rmtree(run_dir / "export")
    shutil.rmtree(run_dir / "export_final")
    _, _, resumed = fit(8, log_model=False)
    history = first_value_per_step(client, result.mlflow_run_id, "dev/accuracy")
    assert sorted(history) == [2, 4, 6, 8]
    best = expected_best(history)
    assert resumed.metrics["dev/best_step"] == best
    assert_export_holds(resumed.export_dir, checkpoint_weights(run_dir, best))
    if best < 8:
        assert_export_holds(resumed.final_export_dir, checkpoint_weights(run_dir, 8))
    else:
        assert resumed.final_export_dir == resumed.export_dir and not (run_dir / "export_final").exists()
