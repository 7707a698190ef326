"""A DistributedSampler that can begin an epoch part-way through, so a resumed run collates nothing it skips."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler whose epoch may start at a batch offset: `set_epoch(epoch, start_batch=k)` yields the
    epoch's order (the same permutation of seed + epoch) from its k-th batch of `batch_size` on, so a DataLoader
    with that batch size gives batches k, k+1, ... of the uninterrupted epoch, identical ones, without building the
    first k. The offset holds for that one epoch: the next set_epoch starts at batch 0 unless told otherwise."""

    def __init__(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch on this rank (the last one may be short), whatever the current offset."""
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch < max(1, self.batches_per_epoch):
            raise ValueError(
                f"start_batch {start_batch} is outside epoch {epoch}'s {self.batches_per_epoch} batches on rank "
                f"{self.rank}"
            )
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start_batch * self.batch_size, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_batch * self.batch_size
