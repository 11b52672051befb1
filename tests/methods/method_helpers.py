"""Helpers for the method tests: a tiny r3d backbone, tiny heads, tiny multi-clip batches, one engine step.

Sizes keep the whole suite fast on two CPU cores: B=4 videos, clips of 3x4x16x16, an r3d_tiny
of width 4 (16 features) and heads of width 32/16; the methods that need tokens (VideoMAE) get
a vit_tiny (8x8 patches: a 2x2x2 token grid) and a decoder (predictor) of width 16.
"""

from __future__ import annotations

import pytest
import torch

import methods
from harness import backbones

# Test sizes of the parameters that set head widths, prototypes, queues and classes. A method gets
# those of them that it takes (by its signature), so a new method needs no entry here. A size whose
# default is 0 means "off" (SwAV's queue) and stays off.
TINY_SIZES: dict[str, object] = {
    "hidden_dims": (32,),
    "projector_hidden_dims": (32,),
    "predictor_hidden_dims": (32,),
    "out_dim": 16,
    "num_prototypes": 10,
    "queue_size": 64,
    "num_classes": 5,
    "decoder_dim": 16,
    "pred_dim": 16,
    "pred_depth": 1,
}


def tiny_params(name: str) -> dict[str, object]:
    """The ``TINY_SIZES`` that method ``name`` takes and has on by default."""
    defaults = methods.params_of(name)
    return {key: size for key, size in TINY_SIZES.items() if key in defaults and defaults[key] != 0}


def trainable_methods() -> list[str]:
    """Every registered method with parameters to train (all but the random-init baseline)."""
    return [name for name in methods.available() if methods.get(name).trainable]


def low_memory_methods() -> list[str]:
    """Every registered method with a low-memory mode (a ``memory`` parameter)."""
    return [name for name in methods.available() if "memory" in methods.params_of(name)]


def build_method(name: str, seed: int = 0, **params) -> methods.SSLMethod:
    """``methods.build(name)`` around a fresh r3d_tiny (width 4), or vit_tiny for the methods that
    need tokens, tiny heads, deterministic init."""
    torch.manual_seed(seed)
    if methods.get(name).needs_tokens:
        backbone, feature_dim = backbones.build("vit_tiny")
    else:
        backbone, feature_dim = backbones.build("r3d_tiny", width=4)
    return methods.build(name, backbone, feature_dim, **{**tiny_params(name), **params})


def make_batch(rho: int, batch_size: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    """A collated batch with V = max(rho, 2) clips; rho = 1 gives two perturbed copies of one clip."""
    generator = torch.Generator().manual_seed(seed)
    if rho == 1:
        clip = torch.randn(batch_size, 1, 3, 4, 16, 16, generator=generator)
        clips = clip + 0.1 * torch.randn(batch_size, 2, 3, 4, 16, 16, generator=generator)
    else:
        clips = torch.randn(batch_size, rho, 3, 4, 16, 16, generator=generator)
    return {
        "clips": clips,
        "label": torch.randint(0, 5, (batch_size,), generator=generator),
        "index": torch.arange(batch_size),
    }


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of a module's parameters by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def sgd_step(
    method: methods.SSLMethod, batch: dict[str, torch.Tensor], lr: float = 0.5
) -> methods.StepOutput:
    """One engine step (without on_step_end): zero grads, training_step, backward unless done, SGD step."""
    optimizer = torch.optim.SGD(method.param_groups(weight_decay=1e-4), lr=lr)
    optimizer.zero_grad(set_to_none=True)
    out = method.training_step(batch)
    if not out.backward_done:
        out.loss.backward()
    optimizer.step()
    return out


def assert_step_trains(method: methods.SSLMethod, batch: dict[str, torch.Tensor]) -> methods.StepOutput:
    """One step gives a finite loss with metrics and moves every backbone parameter that got a gradient."""
    before = snapshot(method.backbone)
    out = sgd_step(method, batch)
    assert torch.isfinite(out.loss), out.loss
    assert out.metrics["loss"] == pytest.approx(out.loss.item())
    moved = [name for name, p in method.backbone.named_parameters() if not torch.equal(p, before[name])]
    assert len(moved) == len(before), f"backbone parameters that did not move: {set(before) - set(moved)}"
    return out


def assert_ema_only(method: methods.SSLMethod, online: list, target: list, batch, base: float) -> None:
    """The target networks move only in on_step_end, by target = m * old + (1 - m) * online."""
    old = [snapshot(module) for module in target]
    sgd_step(method, batch)
    for module, before in zip(target, old, strict=True):
        for name, p in module.named_parameters():
            assert torch.equal(p, before[name]), f"target {name} moved before on_step_end"
    progress = 0.3
    method.on_step_end(progress)
    m = methods.cosine_momentum(base, progress)
    assert method.momentum == pytest.approx(m)
    for online_module, module, before in zip(online, target, old, strict=True):
        online_params = dict(online_module.named_parameters())
        for name, p in module.named_parameters():
            expected = m * before[name] + (1 - m) * online_params[name].detach()
            torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
        for (name, buffer), online_buffer in zip(
            module.named_buffers(), online_module.buffers(), strict=True
        ):
            assert torch.equal(buffer, online_buffer), f"target buffer {name} not copied"
