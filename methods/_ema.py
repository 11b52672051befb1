"""Momentum (EMA) target networks: the cosine momentum schedule and the update (MoCo, BYOL)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn


def cosine_momentum(base: float, progress: float) -> float:
    """``1 - (1 - base) * (cos(pi * progress) + 1) / 2``: ``base`` at progress 0, rising to 1.0 at 1.

    The annealing of BYOL (and of the paper's ρMoCo, 0.994 -> 1): the target moves less and
    less as training ends.
    """
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def momentum_copy(online: nn.Module) -> nn.Module:
    """A frozen copy of ``online`` to serve as its EMA target: same weights, no gradients."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for parameters; buffers are copied.

    Buffers (BatchNorm running statistics) are copied rather than averaged, as in MoCo and
    BYOL's reference code. ``online`` and ``target`` must have the same architecture.
    """
    for online_param, target_param in zip(online.parameters(), target.parameters(), strict=True):
        target_param.mul_(momentum).add_(online_param.detach(), alpha=1.0 - momentum)
    for online_buffer, target_buffer in zip(online.buffers(), target.buffers(), strict=True):
        target_buffer.copy_(online_buffer)


def ema_step(pairs: Iterable[tuple[nn.Module, nn.Module]], base: float, progress: float) -> float:
    """``ema_update`` of each (online, target) pair at ``cosine_momentum(base, progress)``; returns that momentum."""
    momentum = cosine_momentum(base, progress)
    for online, target in pairs:
        ema_update(online, target, momentum)
    return momentum
