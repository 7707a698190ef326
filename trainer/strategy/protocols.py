"""What code outside the strategy needs of it: the ranks' collectives, typed without importing DeepSpeed."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class DistributedContext(Protocol):
    """The process group as methods and evaluation see it (trainer.strategy.deepspeed_strategy implements it)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_rank_zero(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    def barrier(self) -> None: ...

    def broadcast_object(self, obj: Any) -> Any: ...

    def all_gather_objects(self, obj: Any) -> list[Any]: ...
