"""What every rank adds to its DeepSpeed checkpoint shard: its RNG streams, then a manifest that seals it.

A resumed run draws the same random numbers as an uninterrupted one (dropout, sampling), so its weights
match. The manifest, written last, lists every file of the shard with its size; a checkpoint is complete
only when every rank's manifest is there and every listed file has its listed size. A process killed while
saving leaves no manifest (or a short file), and `latest()` then falls back to the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

MANIFEST_PREFIX = "reasondistill-manifest-rank"
RNG_PREFIX = "reasondistill-rng-rank"


def save_rank_state(directory: Path, rank: int) -> None:
    torch.save(
        {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        directory / f"{RNG_PREFIX}{rank}.pt",
    )


def load_rank_state(directory: Path, rank: int) -> None:
    """Restore this rank's RNG streams (a checkpoint from a different world size keeps the current ones)."""
    path = directory / f"{RNG_PREFIX}{rank}.pt"
    if not path.is_file():
        return
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def seal(directory: Path, rank: int, world_size: int) -> None:
    """Write this rank's manifest of the files now in `directory` (call after every rank finished writing)."""
    files = {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.name.startswith(MANIFEST_PREFIX)
    }
    tmp = directory / f".{MANIFEST_PREFIX}{rank}.tmp"
    tmp.write_text(json.dumps({"rank": rank, "world_size": world_size, "files": files}))
    os.replace(tmp, directory / f"{MANIFEST_PREFIX}{rank}.json")


def incomplete_reason(directory: Path) -> str | None:
    """None when every rank sealed `directory` and all listed files are whole; else what is missing."""
    manifests = sorted(directory.glob(f"{MANIFEST_PREFIX}*.json"))
    if not manifests:
        return f"{directory}: no manifest (a save was interrupted before it finished)"
    try:
        sealed = [json.loads(path.read_text()) for path in manifests]
    except (OSError, ValueError) as exc:
        return f"{directory}: unreadable manifest ({exc})"
    world_size = sealed[0]["world_size"]
    missing_ranks = sorted(set(range(world_size)) - {m["rank"] for m in sealed})
    if missing_ranks:
        return f"{directory}: ranks {missing_ranks} of {world_size} never sealed their shard"
    for manifest in sealed:
        for name, size in manifest["files"].items():
            path = directory / name
            if not path.is_file() or path.stat().st_size != size:
                return f"{directory}: {name} is missing or truncated (rank {manifest['rank']})"
    return None
