"""Where checkpoints come from and go to, so the loop runs the same under Ray Train or a plain launcher."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from trainer.checkpoint_shard import incomplete_reason


def first_complete(candidates: Iterable[Path], where: str) -> Path | None:
    """The first sealed checkpoint, newest first; torn ones are reported and skipped, never loaded."""
    skipped = []
    for directory in candidates:
        reason = incomplete_reason(directory)
        if reason is None:
            return directory
        print(f"[checkpoint] skipping a torn checkpoint: {reason}", flush=True)
        skipped.append(reason)
    if skipped:
        raise RuntimeError(f"no complete checkpoint in {where}: " + "; ".join(skipped))
    return None


class CheckpointIO(Protocol):
    """Every rank calls `report` the same number of times, each with its own checkpoint shard dir."""

    def latest(self) -> contextlib.AbstractContextManager[Path | None]:
        """The newest complete checkpoint (`checkpoint_shard.incomplete_reason`) as a local directory for the
        duration of the block, or None when there is none yet."""

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
        newest = [self.root / pointer.read_text().strip()] if pointer.is_file() else []
        older = sorted(self.root.glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")), reverse=True)
        yield first_complete([*newest, *(p for p in older if p not in newest)], str(self.root))

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
