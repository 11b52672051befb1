"""``EpochSampler``: the order of an epoch as a function of (seed, epoch), sharded over ranks.

It yields ``(epoch, index)`` keys, which ``MultiClipDataset`` uses to seed each item, so
the data an epoch sees is fixed by the seed alone, whatever the worker count, and a resumed
run sees exactly the data an uninterrupted one would have. A run resumed mid-epoch
(``EpochSampler.resume_at``) slices that epoch's order: the items it already trained on are
skipped without being read or decoded.
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
        self.resumed = (0, 0)  # (epoch, items of this rank's share of it already trained on)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, items: int) -> None:
        """Start epoch ``epoch`` after the first ``items`` keys of this rank's share (a run resumed
        mid-epoch); the other epochs are whole."""
        if not 0 <= items <= len(self):
            raise ValueError(f"cannot skip {items} items of an epoch of {len(self)}")
        self.resumed = (epoch, items)

    def skipped(self) -> int:
        """How many keys of the current epoch's share ``__iter__`` leaves out (``resume_at``)."""
        epoch, items = self.resumed
        return items if self.epoch == epoch else 0

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
        for index in order[self.rank : total : self.world_size][self.skipped() :]:
            yield self.epoch, index


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``sampler``'s keys for epochs ``start`` … ``stop - 1`` in one stream.

    One DataLoader iterator then spans the whole training, so its workers prefetch the next
    epoch's first batches while the current epoch ends (and while the checkpoint is written)
    instead of starting every epoch from an empty queue. Each epoch's last partial batch is
    dropped, so every epoch has ``steps_per_epoch`` batches whatever its start; the epoch that a
    run resumes in (``EpochSampler.resume_at``, whole batches) has those it had not trained on.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, start: int, stop: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.batch_size, self.start, self.stop = sampler, batch_size, start, stop

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    def _skipped_batches(self, epoch: int) -> int:
        resumed, items = self.sampler.resumed
        if resumed != epoch or not self.start <= epoch < self.stop:
            return 0
        if items % self.batch_size:
            raise ValueError(
                f"a resumed epoch must skip whole batches of {self.batch_size}, not {items} items"
            )
        return items // self.batch_size

    def __len__(self) -> int:
        total = max(0, self.stop - self.start) * self.steps_per_epoch
        return total - self._skipped_batches(self.sampler.resumed[0])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.start, self.stop):
            self.sampler.set_epoch(epoch)
            keys = iter(self.sampler)
            for _ in range(self.steps_per_epoch - self._skipped_batches(epoch)):
                yield [next(keys) for _ in range(self.batch_size)]
