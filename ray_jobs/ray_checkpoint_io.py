"""Checkpoints through Ray Train: every rank reports its own DeepSpeed shard; Ray merges them."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train


class RayCheckpointIO:
    """The trainer's CheckpointIO under Ray Train (resume = ray.train.get_checkpoint())."""

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def staging_dir(self, step: int) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"reasondistill-step{step}-"))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        try:
            ray.train.report(metrics, checkpoint=checkpoint)
        finally:
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
