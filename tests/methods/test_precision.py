"""Losses in float32 under bf16 autocast (docs/fidelity.md, row "precision of the losses").

SlowFast computes ρBYOL/ρSimCLR/ρSwAV in float32 and ρMoCo under fp16 AMP; our encoders run
under bf16 autocast on CUDA, but each loss (NT-Xent, Sinkhorn and the swapped prediction,
InfoNCE over the queue, BYOL's regression) must see float32 inputs with autocast off. Checked on
CPU autocast, which casts matmuls to bf16 the same way.
"""

from __future__ import annotations

import pytest
import torch
from method_helpers import build_method, make_batch

import methods.byol
import methods.moco
import methods.simclr
import methods.swav
from methods._precision import in_fp32

LOSSES = {  # method -> (module, the loss function it must call in float32)
    "simclr": (methods.simclr, "nt_xent_loss"),
    "swav": (methods.swav, "swapped_prediction_loss"),
    "moco": (methods.moco, "info_nce_loss"),
    "byol": (methods.byol, "regression_loss"),
}


@pytest.mark.parametrize("memory", ["standard", "low"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_run_in_float32_with_autocast_off_inside_bf16_autocast(name, memory, monkeypatch):
    module, function = LOSSES[name]
    original, seen = getattr(module, function), []

    def spy(*args, **kwargs):
        tensors = [
            a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()
        ]
        seen.append((torch.is_autocast_enabled("cpu"), {t.dtype for t in tensors}))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, spy)
    method = build_method(name, memory=memory)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.training_step(make_batch(2))
        assert torch.is_autocast_enabled("cpu"), "the encoders stay under autocast"
    if not out.backward_done:
        out.loss.backward()
    assert seen and all(not autocast and dtypes == {torch.float32} for autocast, dtypes in seen), seen
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_sinkhorn_codes_of_bf16_scores_differ_and_in_fp32_removes_the_rounding():
    """Why: bf16 scores (a matmul under autocast) round a cosine to 2^-8; at ε 0.05 the codes move."""
    generator = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(256, 128, generator=generator), dim=1)
    prototypes = torch.nn.functional.normalize(torch.randn(1000, 128, generator=generator), dim=1)
    exact = methods.swav.sinkhorn(z @ prototypes.T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = methods.swav.sinkhorn(z @ prototypes.T)
        upcast = in_fp32(lambda a, b: methods.swav.sinkhorn(a @ b.T), z, prototypes)
    assert (rounded - exact).abs().max() > 1e-3 * exact.abs().max()
    torch.testing.assert_close(upcast, exact)


def test_in_fp32_outside_autocast_is_the_plain_call():
    z = torch.randn(8, 16, requires_grad=True)
    loss = in_fp32(methods.byol.regression_loss, z, z.detach().flip(0))
    assert torch.equal(loss, methods.byol.regression_loss(z, z.detach().flip(0)))
    loss.backward()
    assert z.grad is not None and z.grad.dtype == torch.float32
