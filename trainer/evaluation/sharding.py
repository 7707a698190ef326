"""Evaluation split over ranks: each rank answers a strided shard, everyone gets every answer back in order."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from trainer.strategy.protocols import DistributedContext

Item = TypeVar("Item")
Result = TypeVar("Result")


def shard_and_gather(
    items: Sequence[Item], ranks: DistributedContext, answer: Callable[[list[Item]], list[Result]]
) -> list[Result]:
    """`answer` runs on this rank's shard, padded with repeats of the first item so that every rank makes the same
    calls (under ZeRO-3 each forward pass is a collective); padding answers are dropped, the rest gathered and
    returned in the order of `items` on every rank."""
    if not items:
        return []
    world, rank = ranks.world_size, ranks.rank
    shard = list(items[rank::world])
    per_rank = math.ceil(len(items) / world)
    local = answer(shard + [items[0]] * (per_rank - len(shard)))[: len(shard)]
    gathered = ranks.all_gather_objects(local)
    return [gathered[index % world][index // world] for index in range(len(items))]
