"""Where checkpoints come from and go to, so the loop runs the same under Ray Train or a plain launcher."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist


class CheckpointIO(Protocol):
    """Every rank calls `report` the same number of times, each with its own checkpoint shard dir."""

    def latest(self) -> contextlib.AbstractContextManager[Path | None]:
        """The newest checkpoint as a local directory for the duration of the block, or None."""

    def staging_dir(self, step: int) -> Path:
        """A fresh directory this rank writes its shard of the step's checkpoint into."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Publish metrics (and the staged checkpoint, if any)."""


class LocalCheckpointIO:
    """Checkpoints in `<root>/step_<n>/` on a filesystem every rank shares, `latest` naming the newest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        pointer = self.root / "latest"
        yield self.root / pointer.read_text().strip() if pointer.is_file() else None

    def staging_dir(self, step: int) -> Path:
        path = self.root / f"step_{step}"
        if dist.get_rank() == 0 and path.exists():
            shutil.rmtree(path)
        dist.barrier()
        return path

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        dist.barrier()  # every shard is on disk before `latest` moves
        if dist.get_rank() == 0:
            tmp = self.root / "latest.tmp"
            tmp.write_text(checkpoint_dir.name)
            tmp.replace(self.root / "latest")
        dist.barrier()
