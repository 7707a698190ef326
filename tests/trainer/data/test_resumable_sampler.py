"""ResumableDistributedSampler: an epoch started at batch k gives the uninterrupted epoch's batches k, k+1, ..."""

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from trainer.data.resumable_sampler import ResumableDistributedSampler

DATASET = list(range(23))  # 23 over 2 ranks: 11 each with drop_last, the last batch of 3 short


def batches(sampler, epoch: int, **start) -> list[list[int]]:
    sampler.set_epoch(epoch, **start)
    return [batch.tolist() for batch in DataLoader(DATASET, batch_size=4, sampler=sampler)]


@pytest.mark.parametrize("rank", [0, 1])
def test_an_offset_epoch_is_the_tail_of_the_whole_one(rank: int) -> None:
    kwargs = {"num_replicas": 2, "rank": rank, "shuffle": True, "seed": 5, "drop_last": True}
    plain = DistributedSampler(DATASET, **kwargs)
    sampler = ResumableDistributedSampler(DATASET, 4, **kwargs)
    assert sampler.batches_per_epoch == 3
    for epoch in (0, 1):
        whole = batches(plain, epoch)
        assert batches(sampler, epoch) == whole
        for start in range(3):
            assert batches(sampler, epoch, start_batch=start) == whole[start:]
            assert len(sampler) == sum(map(len, whole[start:]))
    batches(sampler, 2, start_batch=2)
    assert batches(sampler, 3) == batches(plain, 3)  # the offset held for epoch 2 only
    assert sampler.batches_per_epoch == 3


def test_an_offset_past_the_epoch_is_refused() -> None:
    sampler = ResumableDistributedSampler(DATASET, 4, num_replicas=2, rank=1)
    with pytest.raises(ValueError, match="start_batch 3 is outside epoch 0's 3 batches on rank 1"):
        sampler.set_epoch(0, start_batch=3)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ResumableDistributedSampler(DATASET, 0, num_replicas=2, rank=0)
