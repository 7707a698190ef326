"""Sealed checkpoint shards: a save cut short is never loaded; the previous complete checkpoint is."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from trainer.checkpoint_io import LocalCheckpointIO
from trainer.checkpoint_shard import incomplete_reason, load_rank_state, save_rank_state, seal


def write_shards(directory: Path, world_size: int, sealed_ranks: list[int]) -> Path:
    directory.mkdir(parents=True)
    for rank in range(world_size):
        (directory / f"optim_rank{rank}.pt").write_bytes(b"x" * (100 + rank))
    for rank in sealed_ranks:
        seal(directory, rank, world_size)
    return directory


def test_only_fully_sealed_checkpoints_are_complete(tmp_path: Path) -> None:
    assert incomplete_reason(write_shards(tmp_path / "a", 2, [0, 1])) is None
    assert "no manifest" in incomplete_reason(write_shards(tmp_path / "b", 2, []))
    assert "ranks [1] of 2 never sealed" in incomplete_reason(write_shards(tmp_path / "c", 2, [0]))
    truncated = write_shards(tmp_path / "d", 2, [0, 1])
    (truncated / "optim_rank1.pt").write_bytes(b"x" * 7)  # the bytes a killed writer left
    assert "optim_rank1.pt is missing or truncated" in incomplete_reason(truncated)


def test_local_checkpoints_fall_back_past_a_torn_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_shards(tmp_path / "step_2", 2, [0, 1])
    write_shards(tmp_path / "step_4", 2, [0])  # the save of step 4 died after rank 0 sealed
    (tmp_path / "latest").write_text("step_4")
    with LocalCheckpointIO(tmp_path).latest() as chosen:
        assert chosen == tmp_path / "step_2"
    assert "skipping a torn checkpoint" in capsys.readouterr().out
    with LocalCheckpointIO(tmp_path / "empty").latest() as chosen:
        assert chosen is None
    (tmp_path / "step_2" / "optim_rank0.pt").unlink()
    with pytest.raises(RuntimeError, match="no complete checkpoint"), LocalCheckpointIO(tmp_path).latest():
        pass


def test_rng_streams_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    random.seed(3)
    save_rank_state(tmp_path, rank=1)
    expected = (torch.rand(4), random.random())
    torch.manual_seed(99)
    random.seed(99)
    load_rank_state(tmp_path, rank=1)
    assert torch.equal(torch.rand(4), expected[0]) and random.random() == expected[1]
