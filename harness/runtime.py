"""Where a run executes: device, precision and the process group under torchrun.

``torchrun --nproc_per_node=N -m harness pretrain ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; ``Runtime.setup`` then joins the process group (NCCL on CUDA, gloo on CPU),
and each rank takes GPU ``LOCAL_RANK``. Without those variables it is one process.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from harness.config import RuntimeConfig

Device = str | torch.device


@dataclass(frozen=True)
class Runtime:
    """The resolved execution context of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    bf16: bool = False
    channels_last: bool = False
    owns_process_group: bool = False  # setup joined the process group (so teardown leaves it)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, config: RuntimeConfig) -> Runtime:
        """Pick the device and precision; join the process group when launched by torchrun."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if config.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "runtime.device = 'cuda' but no CUDA device is visible; use runtime.device=cpu or auto"
            )
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            device = torch.device("cpu")
        joins = world_size > 1 and not dist.is_initialized()
        if joins:
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
            )
        bf16 = config.precision == "bf16" or (config.precision == "auto" and use_cuda)
        return cls(
            device,
            rank,
            world_size,
            local_rank,
            bf16=bf16,
            channels_last=use_cuda and config.channels_last,
            owns_process_group=joins,
        )

    @classmethod
    def for_device(cls, device: Device) -> Runtime:
        """One process on ``device``: bf16 autocast and channels_last_3d on CUDA, fp32 elsewhere (evaluation)."""
        device = torch.device(device)
        on_cuda = device.type == "cuda"
        return cls(device, bf16=on_cuda, channels_last=on_cuda)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where enabled, else nothing."""
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: dict) -> dict:
        """Move a batch's tensors to the device (asynchronously from pinned memory)."""
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }

    def clips_to_device(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, C, T, H, W] on the device (asynchronously from pinned memory), channels_last_3d where enabled."""
        clips = clips.to(self.device, non_blocking=True)
        return clips.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else clips

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a model to the device, in channels_last_3d where enabled (CUDA)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last_3d) if self.channels_last else model

    def teardown(self) -> None:
        """Leave the process group that ``setup`` joined; one that the caller made stays."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
