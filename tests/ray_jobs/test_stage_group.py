"""A shared worker group's stages resume only from their own checkpoints.

`ray.train.get_checkpoint` is replaced by a function returning a real Checkpoint: outside a Ray Train worker
there is no train context to ask. The group itself runs for real in test_pipeline_e2e (teacher and student on
one worker group) and in the driver-kill test of tests/ray_jobs/reliability (a re-submitted pipeline resumes
its student)."""

import shutil
from pathlib import Path

import pytest
import ray.train

from ray_jobs.stage_group import STAGE_FILE, StageCheckpointIO
from trainer.checkpoint_shard import seal


@pytest.fixture
def latest_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The student stage's sealed checkpoint, as Ray Train's latest."""
    staging = StageCheckpointIO("student").staging_dir(5)
    directory = tmp_path / "checkpoint_000001"
    shutil.move(staging, directory)
    (directory / "weights.bin").write_bytes(b"\0")
    seal(directory, 0, 1)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(directory)))
    return directory


def test_a_stage_resumes_from_its_own_checkpoint(latest_checkpoint: Path) -> None:
    assert (latest_checkpoint / STAGE_FILE).read_text() == "student"
    with StageCheckpointIO("student").latest() as directory:
        assert directory is not None and (directory / "weights.bin").is_file()


def test_a_stage_ignores_another_stages_checkpoint(latest_checkpoint: Path) -> None:
    with StageCheckpointIO("teacher").latest() as directory:
        assert directory is None
