"""ρBYOL: the regression loss against its formula, one training step (the EMA target: test_base.py)."""

from __future__ import annotations

import pytest
import torch
from method_helpers import assert_step_trains, build_method, make_batch

from methods._memory import embed_clips
from methods.byol import regression_loss


def test_regression_loss_matches_formula():
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    z = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    expected = (
        sum(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(5)) / 5
    )  # ||p/|p| - z/|z| ||^2 = 2 - 2 cos
    assert regression_loss(p, z).item() == pytest.approx(expected, rel=1e-9)
    assert regression_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-12)
    assert regression_loss(p, -p).item() == pytest.approx(4.0)


@pytest.mark.parametrize("rho", [1, 2, 3])
def test_step_trains(rho):
    out = assert_step_trains(build_method("byol"), make_batch(rho))
    assert set(out.metrics) == {"loss", "momentum", "embedding_std"}
    assert out.metrics["momentum"] == 0.996


def test_step_loss_is_mean_over_ordered_pairs():
    method = build_method("byol")
    batch = make_batch(3)
    loss = method.training_step(batch).loss
    clips = batch["clips"]
    predictions = embed_clips(lambda c: method.predictor(method.projector(method.backbone(c))), clips)
    with torch.no_grad():
        targets = embed_clips(lambda c: method.target_projector(method.target_backbone(c)), clips)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    expected = sum(regression_loss(predictions[:, a], targets[:, b]) for a, b in pairs) / len(pairs)
    torch.testing.assert_close(loss, expected)


def test_heads_follow_paper_shapes():
    method = build_method("byol", projector_hidden_dims=(40,), out_dim=12, predictor_hidden_dims=(24,))
    linear = torch.nn.Linear
    assert [m.out_features for m in method.projector if isinstance(m, linear)] == [40, 12]
    assert [m.out_features for m in method.predictor if isinstance(m, linear)] == [24, 12]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in method.projector)
    optimised = {id(p) for group in method.param_groups(0.1) for p in group["params"]}
    assert {id(p) for p in method.predictor.parameters()} <= optimised
    assert not optimised & {id(p) for p in method.target_projector.parameters()}


def test_predictor_lr_scale_moves_only_the_predictor_faster():
    from harness.config import OptimConfig
    from harness.optim import build_optimizer, set_lr

    plain, scaled = build_method("byol"), build_method("byol", predictor_lr_scale=10.0)
    assert len(scaled.param_groups(1e-4)) == 4 and len(plain.param_groups(1e-4)) == 2
    grouped = [p for group in scaled.param_groups(1e-4) for p in group["params"]]
    trainable = [p for p in scaled.parameters() if p.requires_grad]
    assert sorted(map(id, grouped)) == sorted(map(id, trainable))  # each trainable parameter once
    batch = make_batch(2)
    sgd = OptimConfig(name="sgd", momentum=0.0)
    for method, predictor_rate in ((plain, 0.01), (scaled, 0.1)):
        optimizer = build_optimizer(method.param_groups(0.0), sgd, peak_lr=0.01)
        set_lr(optimizer, 0.01)
        method.training_step(batch).loss.backward()
        before = {name: p.detach().clone() for name, p in method.named_parameters()}
        grads = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
        optimizer.step()
        for name, parameter in method.named_parameters():
            if name in grads:
                rate = predictor_rate if name.startswith("predictor.") else 0.01
                step = before[name] - parameter.detach()
                assert torch.allclose(step, rate * grads[name], atol=1e-7), name
    with pytest.raises(ValueError, match="predictor_lr_scale"):
        build_method("byol", predictor_lr_scale=0.0)
