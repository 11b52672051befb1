"""Optimisers and the learning-rate schedule of pretraining.

- SGD (momentum, Nesterov switch), LARS and AdamW over the method's ``param_groups``; groups
  marked ``lars_exclude`` (biases, norm layers) get no weight decay and no LARS adaptation.
- Learning-rate rule: ``lr = optim.lr × (global batch / optim.base_batch_size)^p`` with p = 1
  (``linear``, Goyal et al.), ½ (``sqrt``) or 0 (``none``).
- Schedule per step, ``optim.schedule``: ``cosine_after_warmup`` (ours): linear warmup from
  ``warmup_start_lr`` to that lr over ``warmup_epochs``, then a half-cosine over the remaining
  steps down to ``min_lr_ratio × lr``; ``cosine_with_warmup`` (SlowFast's
  ``slowfast/utils/lr_policy.py`` with COSINE_AFTER_WARMUP False): one half-cosine over all
  epochs, the warmup a line from ``warmup_start_lr`` to the cosine's value at the warmup's end.
  A group's ``lr_scale`` (e.g. a predictor at ×10) multiplies it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from harness.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update (gradient plus weight decay) is scaled by the local rate
    ``trust × ‖w‖ / (‖g‖ + weight_decay × ‖w‖)`` before momentum, except in groups marked
    ``lars_exclude``: the formula of You et al. and of SlowFast's LARS
    (``slowfast/models/optimizer.py``, after apex's LARC with ``clip=False``). Nesterov
    momentum as in ``torch.optim.SGD`` (SlowFast wraps SGD with SOLVER.NESTEROV, True).
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
                grad = param.grad
                update = grad.add(param, alpha=group["weight_decay"]) if group["weight_decay"] else grad
                if not group.get("lars_exclude", False):
                    param_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    trust = (
                        group["trust"]
                        * param_norm
                        / (grad_norm + group["weight_decay"] * param_norm + group["eps"])
                    )
                    update = update * torch.where(
                        (param_norm > 0) & (grad_norm > 0), trust, torch.ones_like(trust)
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


def lr_at(
    step: int,
    total_steps: int,
    warmup_steps: float,
    peak_lr: float,
    min_lr_ratio: float = 0.0,
    schedule: str = "cosine_after_warmup",
    warmup_start_lr: float = 0.0,
) -> float:
    """The learning rate of step ``step`` (0-based) of ``total_steps``.

    ``cosine_after_warmup``: linear warmup over ``warmup_steps`` from ``warmup_start_lr`` (step
    −1) to ``peak_lr`` (its last step), then a half-cosine over the remaining steps to
    ``min_lr_ratio × peak``. ``cosine_with_warmup`` (SlowFast's ``get_lr_at_epoch``, in steps
    instead of epochs): ``cos(s) = floor + (peak − floor)·(1 + cos(π·s/total))/2`` over all
    steps; for s < warmup the line ``warmup_start_lr + (cos(warmup) − warmup_start_lr)·s/warmup``.
    """
    floor = peak_lr * min_lr_ratio
    if schedule == "cosine_with_warmup":

        def cosine(at: float) -> float:
            return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, at / total_steps)))

        if step < warmup_steps:
            return warmup_start_lr + (cosine(warmup_steps) - warmup_start_lr) * step / warmup_steps
        return cosine(step)
    if step < warmup_steps:
        return warmup_start_lr + (peak_lr - warmup_start_lr) * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a scheduled lr to every group (times its ``lr_scale``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
