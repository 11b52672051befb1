"""Low-memory mode: the same loss, gradients and state as standard mode, with activation memory flat in ρ."""

from __future__ import annotations

import weakref

import pytest
import torch
from method_helpers import build_method, low_memory_methods, make_batch

import methods

LOW_MEMORY_METHODS = low_memory_methods()


def _step(name: str, memory: str, rho: int, epoch: int = 1, **params):
    """One training step (and backward) of a freshly built method; returns the method and the output."""
    method = build_method(name, memory=memory, **params)
    method.on_epoch_start(epoch)
    out = method.training_step(make_batch(rho))
    assert out.backward_done is (memory == "low")
    if not out.backward_done:
        out.loss.backward()
    return method, out


@pytest.mark.parametrize("loss_reduction", ["mean", "slowfast"])
@pytest.mark.parametrize("rho", [2, 3])
@pytest.mark.parametrize("name", LOW_MEMORY_METHODS)
def test_low_memory_matches_standard(name, rho, loss_reduction):
    reduction = {"loss_reduction": loss_reduction} if "loss_reduction" in methods.params_of(name) else {}
    if not reduction and loss_reduction != "mean":
        pytest.skip(f"{name} has no loss_reduction")
    standard, standard_out = _step(name, "standard", rho, **reduction)
    low, low_out = _step(name, "low", rho, **reduction)
    assert not low_out.loss.requires_grad
    torch.testing.assert_close(low_out.loss, standard_out.loss.detach(), rtol=0, atol=1e-6)
    for (param_name, p), q in zip(standard.named_parameters(), low.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), param_name
        if p.grad is not None:
            torch.testing.assert_close(
                q.grad, p.grad, rtol=0, atol=1e-5, msg=lambda m, n=param_name: f"{n}: {m}"
            )
    # BatchNorm running statistics and queues end identical too (each clip counted once).
    for (buffer_name, b), c in zip(standard.named_buffers(), low.buffers(), strict=True):
        torch.testing.assert_close(c, b, rtol=0, atol=1e-6, msg=lambda m, n=buffer_name: f"{n}: {m}")
    assert low_out.metrics.keys() == standard_out.metrics.keys()


def test_low_memory_swav_keeps_prototypes_frozen_in_first_epoch():
    low, _ = _step("swav", "low", 3, epoch=0)
    assert low.prototypes.weight.grad is None
    assert low.head[0].weight.grad is not None


class _SavedActivationMeter:
    """Peak bytes of tensors autograd holds for backward (parameters excluded), via saved-tensor hooks."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def _free(self, size: int) -> None:
        self.live -= size

    def pack(self, tensor: torch.Tensor):
        holder = _Holder(tensor)
        size = (
            0
            if isinstance(tensor, torch.nn.Parameter) or (tensor.is_leaf and tensor.requires_grad)
            else (tensor.numel() * tensor.element_size())
        )
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, size)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.tensor


class _Holder:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _peak_saved_bytes(name: str, memory: str, rho: int) -> int:
    meter = _SavedActivationMeter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        _step(name, memory, rho)
    return meter.peak


@pytest.mark.parametrize("name", LOW_MEMORY_METHODS)
def test_activation_memory_is_flat_in_rho(name):
    standard = [_peak_saved_bytes(name, "standard", rho) for rho in (2, 4)]
    low = [_peak_saved_bytes(name, "low", rho) for rho in (2, 4)]
    assert standard[1] > 1.8 * standard[0], standard  # standard mode holds every clip's graph
    assert low[1] < 1.1 * low[0], low  # low-memory mode holds one clip's graph at a time
    assert low[1] < 0.6 * standard[1], (low, standard)
