"""A fixed-size FIFO of embeddings kept as buffers (MoCo's negatives, SwAV's extra Sinkhorn samples)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KeyQueue(nn.Module):
    """A ring buffer of ``size`` embeddings of width ``dim``: new rows overwrite the oldest.

    It starts as random unit vectors (MoCo's initial negatives); ``is_full`` tells when every
    row holds a real embedding (SwAV uses the queue only from then on).

    Buffers (saved in checkpoints): ``keys`` [size, dim], ``videos`` [size] (the dataset row each
    key came from, -1 when unknown: MoCo drops a query's own video from its negatives),
    ``pointer`` (next row to write) and ``count`` (rows written so far, capped at ``size``).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("videos", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def is_full(self) -> bool:
        return int(self.count) >= self.size

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints from before ``videos`` existed: their keys' videos are unknown.
        state_dict.setdefault(prefix + "videos", torch.full_like(self.videos, -1))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def enqueue(self, new_keys: Tensor, videos: Tensor | None = None) -> None:
        """Write ``new_keys`` [M, dim] (from dataset rows ``videos`` [M], if known) after the newest rows.

        Wraps around the end; when M > size only the last ``size`` rows are kept (as if written
        one by one).
        """
        total = new_keys.shape[0]
        if videos is None:
            videos = torch.full((total,), -1, dtype=torch.long)
        rows = (int(self.pointer) + torch.arange(total, device=self.keys.device)) % self.size
        if total > self.size:
            rows, new_keys, videos = rows[-self.size :], new_keys[-self.size :], videos[-self.size :]
        self.keys[rows] = new_keys.to(self.keys.dtype)
        self.videos[rows] = videos.to(self.videos.device, torch.long)
        self.pointer.fill_((int(self.pointer) + total) % self.size)
        self.count.fill_(min(int(self.count) + total, self.size))
