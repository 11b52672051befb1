"""``EpochSampler``: the order of an epoch as a function of (seed, epoch), sharded over ranks.

It yields ``(epoch, index)`` keys, which ``MultiClipDataset`` uses to seed each item, so
the data an epoch sees is fixed by the seed alone, whatever the worker count, and a resumed
run sees exactly the data an uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or in-order) indices for one rank; call ``set_epoch`` before each epoch.

    Like ``DistributedSampler``: the permutation is padded by wrapping to a multiple of
    ``world_size`` and rank r takes positions r, r + world_size, …
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = len(self) * self.world_size
        order += order[: total - len(order)]
        for index in order[self.rank : total : self.world_size]:
            yield self.epoch, index


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``sampler``'s keys for epochs ``start`` … ``stop - 1`` in one stream.

    One DataLoader iterator then spans the whole training, so its workers prefetch the next
    epoch's first batches while the current epoch ends (and while the checkpoint is written)
    instead of starting every epoch from an empty queue. Each epoch's last partial batch is
    dropped, so every epoch has ``steps_per_epoch`` batches whatever its start.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, start: int, stop: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.batch_size, self.start, self.stop = sampler, batch_size, start, stop

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.steps_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.start, self.stop):
            self.sampler.set_epoch(epoch)
            keys = iter(self.sampler)
            for _ in range(self.steps_per_epoch):
                yield [next(keys) for _ in range(self.batch_size)]
