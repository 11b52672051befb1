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
