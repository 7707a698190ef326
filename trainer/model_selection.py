"""Where the model a run selects on dev lives: its export directory, and a copy inside every checkpoint.

With `run.eval_every`, the model of the best dev evaluation is exported as soon as it is found and becomes the
run's `model`. Rank 0 copies that export into each checkpoint it saves (beside DeepSpeed's shards), so a run
resumed on another node, whose local export directory is gone, still exports and logs the step it selected.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SELECTED_IN_CHECKPOINT = "selected_model"


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished directory into `target`'s place, so `target` never holds a half-written export."""
    if target.exists():
        shutil.rmtree(target)
    source.replace(target)


def stash_selected(export_dir: Path, checkpoint_dir: Path) -> None:
    """Copy the selected model's export into a checkpoint being staged (rank 0 only)."""
    shutil.copytree(export_dir, checkpoint_dir / SELECTED_IN_CHECKPOINT, dirs_exist_ok=True)


def restore_selected(checkpoint_dir: Path, export_dir: Path | None) -> bool:
    """Whether a checkpoint carries a selected model; rank 0 (given `export_dir`) puts it back there."""
    saved = checkpoint_dir / SELECTED_IN_CHECKPOINT
    if not saved.is_dir() or export_dir is None:
        return saved.is_dir()
    staging = export_dir.with_name(f"{export_dir.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(saved, staging)
    replace_dir(staging, export_dir)
    return True
