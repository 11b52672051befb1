"""EpochSampler and EpochBatchSampler: the data order is a function of (seed, epoch) only."""

from __future__ import annotations

import pytest

from harness.data.epoch_order import EpochBatchSampler, EpochSampler


def one_epoch(size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    sampler = EpochSampler(size, seed, True, rank, world_size)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_seeded_permutation_and_ranks_split_it():
    first, second = one_epoch(10, 3, 0), one_epoch(10, 3, 1)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in first} == {0}
    assert [i for _, i in first] != [i for _, i in second]  # a new order each epoch
    assert first == one_epoch(10, 3, 0)  # and the same order again for the same (seed, epoch)
    shards = [one_epoch(10, 3, 0, rank, 3) for rank in range(3)]
    assert all(len(shard) == 4 for shard in shards)  # padded by wrapping to 12
    assert {i for shard in shards for _, i in shard} == set(range(10))


def test_batches_stream_across_epochs_dropping_each_epochs_last_partial_batch():
    sampler = EpochSampler(10, 3)
    batches = list(EpochBatchSampler(sampler, 4, start=1, stop=4))
    assert len(batches) == len(EpochBatchSampler(sampler, 4, 1, 4)) == 3 * 2
    for epoch in (1, 2, 3):
        expected = one_epoch(10, 3, epoch)[:8]  # 10 // 4 = 2 full batches
        got = [key for batch in batches[(epoch - 1) * 2 : epoch * 2] for key in batch]
        assert got == expected


def test_a_resumed_stream_matches_the_tail_of_an_uninterrupted_one():
    full = list(EpochBatchSampler(EpochSampler(9, 5), 3, 0, 5))
    resumed = list(EpochBatchSampler(EpochSampler(9, 5), 3, 2, 5))
    assert resumed == full[2 * 3 :]


def test_bad_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler(EpochSampler(4), 0, 0, 1)
