"""Losses in float32 under autocast, as SlowFast computes them.

SlowFast pretrains ρBYOL, ρSimCLR and ρSwAV in float32 (``TRAIN.MIXED_PRECISION`` unset,
defaults.py:171) and ρMoCo under fp16 AMP (MoCo_SlowR50_8x8.yaml:8), whose logits over the queue
are fp16 products. Our CUDA runs use bf16 autocast (8 significant bits, fewer than fp16's 11):
a cosine near 1 is rounded to a step of 2⁻⁸ ≈ 0.004, which a temperature of 0.1 (Sinkhorn's
ε 0.05) makes a step of 0.04 (0.08) in a logit. The encoders stay under autocast; the losses run here, autocast off and
their inputs upcast to float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

Result = TypeVar("Result")


def _upcast(value: Any) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(torch.promote_types(value.dtype, torch.float32))
    return value


def in_fp32(fn: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """``fn(*args, **kwargs)`` with autocast off and floating-point tensor arguments in (at least) float32.

    A no-op for float32 inputs outside autocast (CPU runs): the same numbers as calling ``fn``.
    Gradients flow through the upcast back to the (bf16) embeddings.
    """
    device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), "cpu")
    with torch.autocast(device_type=device, enabled=False):
        return fn(*map(_upcast, args), **{key: _upcast(value) for key, value in kwargs.items()})
