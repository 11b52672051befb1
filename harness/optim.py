"""Optimisers and the learning-rate schedule of pretraining.

- SGD (momentum, Nesterov switch), LARS and AdamW over the method's ``param_groups``; groups
  marked ``lars_exclude`` (biases, norm layers) get no weight decay and no LARS adaptation.
- Learning-rate rule: ``lr = optim.lr × (global batch / optim.base_batch_size)^p`` with p = 1
  (``linear``, Goyal et al.), ½ (``sqrt``) or 0 (``none``).
- Schedule per step: linear warmup from 0 to that lr over ``warmup_epochs``, then a half-cosine
  down to ``min_lr_ratio × lr``. A group's ``lr_scale`` (e.g. a predictor at ×10) multiplies it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from harness.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update (gradient plus weight decay) is scaled by
    ``trust × ‖w‖ / ‖update‖`` before momentum, except in groups marked ``lars_exclude``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust: float = 0.001,
        nesterov: bool = False,
        eps: float = 1e-8,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, nesterov=nesterov, eps=eps
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if group["weight_decay"]:
                    update = update.add(param, alpha=group["weight_decay"])
                if not group.get("lars_exclude", False):
                    param_norm, update_norm = (
                        torch.linalg.vector_norm(param),
                        torch.linalg.vector_norm(update),
                    )
                    trust = group["trust"] * param_norm / (update_norm + group["eps"])
                    update = update * torch.where(
                        (param_norm > 0) & (update_norm > 0), trust, torch.ones_like(trust)
                    )
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                buffer = state["momentum_buffer"]
                update = update.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                param.add_(update, alpha=-group["lr"])
        return loss


def scaled_lr(config: OptimConfig, global_batch: int) -> float:
    """The peak learning rate for a global batch (the documented scaling rule)."""
    power = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}[config.lr_scaling]
    return config.lr * (global_batch / config.base_batch_size) ** power


def build_optimizer(param_groups: list[dict], config: OptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    """The optimiser named in ``config`` over the method's parameter groups."""
    for group in param_groups:
        group.setdefault("lr_scale", 1.0)
        group["lr"] = peak_lr * group["lr_scale"]
    if config.name == "sgd":
        return torch.optim.SGD(param_groups, lr=peak_lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.name == "lars":
        return LARS(
            param_groups, lr=peak_lr, momentum=config.momentum, trust=config.trust, nesterov=config.nesterov
        )
    return torch.optim.AdamW(param_groups, lr=peak_lr, betas=tuple(config.betas))


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr_ratio: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps`` (from peak/warmup to peak), then half-cosine to ``min_lr_ratio × peak``."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    floor = peak_lr * min_lr_ratio
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a scheduled lr to every group (times its ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
