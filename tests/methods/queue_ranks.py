"""The 2-rank gloo worker of test_fidelity's ρMoCo queue check, in a module of its own so that
the spawned processes import only torch and methods.moco (not the test module's imports)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from methods.moco import MoCo

WORLD_SIZE = 2


def queue_moco() -> MoCo:
    """A BatchNorm-free ρMoCo with SlowFast's per-rank queue (12 keys), the same weights on every rank."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 8))
    return MoCo(
        backbone,
        8,
        hidden_dims=(),
        out_dim=4,
        queue_size=12,
        queue_per_rank=True,
        exclude_same_video=False,
        shuffle_bn=False,
    )


def queue_batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s batch of step ``step``: 2 videos x 2 clips of 3x2x4x4."""
    generator = torch.Generator().manual_seed(10 * step + rank)
    return {"clips": torch.randn(2, 2, 3, 2, 4, 4, generator=generator)}


def queue_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Two training steps (no optimizer: the weights stay put) on this rank; saves losses and queue."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        moco = queue_moco()
        losses = [moco.training_step(queue_batch(rank, step)).loss.item() for step in range(2)]
        torch.save({"losses": losses, "queue": moco.queue.keys.clone()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
