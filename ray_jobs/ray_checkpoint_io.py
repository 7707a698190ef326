"""Checkpoints through Ray Train: every rank reports its own DeepSpeed shard; Ray merges them."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train

from trainer.checkpoint_io import first_complete
from trainer.checkpoint_shard import incomplete_reason


class RayCheckpointIO:
    """The trainer's CheckpointIO under Ray Train (resume = ray.train.get_checkpoint())."""

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        """Ray's latest checkpoint if it is sealed, else the newest sealed one Ray still keeps."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            if incomplete_reason(Path(directory)) is None:
                yield Path(directory)
                return
        older = [r.checkpoint for r in reversed(ray.train.get_all_reported_checkpoints())]
        with contextlib.ExitStack() as stack:
            local = [Path(stack.enter_context(c.as_directory())) for c in [checkpoint, *older]]
            yield first_complete(local, f"Ray Train storage {checkpoint.path}")

    def staging_dir(self, step: int) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"reasondistill-step{step}-"))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        try:
            ray.train.report(metrics, checkpoint=checkpoint)
        finally:
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
