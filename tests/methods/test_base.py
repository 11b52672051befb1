"""The method interface and the shared pieces: param groups, EMA, heads, clip pairs, metrics."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import assert_ema_only, build_method, make_batch, trainable_methods
from torch import nn

from methods import MLPHead, SSLMethod, StepOutput, cosine_momentum, ema_update, momentum_copy
from methods._memory import embed_clips, preserved_buffers
from methods._metrics import embedding_std
from methods._pairs import clip_pairs, ordered_pairs, other_clips


class _Minimal(SSLMethod):
    def training_step(self, batch):
        return StepOutput(self.backbone(batch["clips"][:, 0]).sum())


def test_sslmethod_is_abstract_and_defaults_are_documented():
    with pytest.raises(TypeError):
        SSLMethod(nn.Identity(), 1)
    method = _Minimal(nn.Linear(3, 2), 2)
    assert method.encoder is method.backbone and method.feature_dim == 2
    assert method.uses_labels is False and method.trainable is True
    method.on_step_end(0.5)  # default hooks do nothing
    method.on_epoch_start(0)
    out = StepOutput(torch.tensor(1.0))
    assert out.metrics == {} and out.backward_done is False


def test_param_groups_exclude_biases_norms_and_frozen_parameters():
    backbone = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Flatten(), nn.LayerNorm(4))
    method = _Minimal(backbone, 4)
    method.target = momentum_copy(backbone)
    decay, no_decay = method.param_groups(weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and decay["lars_exclude"] is False
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert [id(p) for p in decay["params"]] == [id(backbone[0].weight)]
    expected_no_decay = [
        backbone[0].bias,
        backbone[1].weight,
        backbone[1].bias,
        backbone[3].weight,
        backbone[3].bias,
    ]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in expected_no_decay]


@pytest.mark.parametrize("name", trainable_methods())
def test_param_groups_cover_every_trainable_parameter_once(name):
    method = build_method(name)
    grouped = [id(p) for group in method.param_groups(1e-4) for p in group["params"]]
    trainable = [id(p) for p in method.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    for group in method.param_groups(1e-4):
        assert all((p.ndim <= 1) == group["lars_exclude"] for p in group["params"])
    # The optimizers accept the groups as they are.
    torch.optim.SGD(method.param_groups(1e-4), lr=0.1)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.994, 0.0) == pytest.approx(0.994)
    assert cosine_momentum(0.994, 1.0) == 1.0
    assert cosine_momentum(0.994, 0.5) == pytest.approx(0.997)
    values = [cosine_momentum(0.9, p / 10) for p in range(11)]
    assert values == sorted(values)
    assert cosine_momentum(0.9, 0.25) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


def test_ema_update_arithmetic_and_buffer_copy():
    online = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    old = [p.detach().clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(5.0)
    ema_update(online, target, momentum=0.75)
    for t, o, before in zip(target.parameters(), online.parameters(), old, strict=True):
        torch.testing.assert_close(t, 0.75 * before + 0.25 * o.detach())
    assert torch.equal(target[1].running_mean, torch.full((3,), 5.0))
    ema_update(online, target, momentum=1.0)  # momentum 1: the target stays
    ema_update(online, target, momentum=0.0)  # momentum 0: the target becomes the online copy
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)


# The methods with EMA targets: each online module's attribute -> its target's.
EMA_TARGETS = {
    "byol": {"backbone": "target_backbone", "projector": "target_projector"},
    "moco": {"backbone": "target_backbone", "head": "target_head"},
    "vjepa": {"backbone": "target_backbone"},
}


@pytest.mark.parametrize("rho", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(EMA_TARGETS))
def test_targets_move_only_by_ema(name, rho):
    method = build_method(name, momentum=0.9)
    online = [getattr(method, attr) for attr in EMA_TARGETS[name]]
    targets = [getattr(method, attr) for attr in EMA_TARGETS[name].values()]
    assert_ema_only(method, online, targets, make_batch(rho), base=0.9)


def test_mlp_head_layers():
    head = MLPHead(8, (16, 12), 4, batch_norm=True)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 8)).shape == (5, 4)
    plain = MLPHead(8, (16,), 4, batch_norm=False)
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear] and plain[0].bias is not None
    assert [type(m) for m in MLPHead(8, (), 4, batch_norm=True)] == [nn.Linear]


def test_clip_pairs():
    assert ordered_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert other_clips(1, 4) == [0, 2, 3]
    assert clip_pairs(4, "all") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert clip_pairs(4, "adjacent") == [(0, 1), (1, 2), (2, 3)]
    assert clip_pairs(2, "adjacent") == clip_pairs(2, "all") == [(0, 1)]
    with pytest.raises(ValueError, match="pairs"):
        clip_pairs(3, "nearest")


def test_embed_clips_forwards_each_clip_as_its_own_batch():
    sizes = []
    clips = torch.randn(4, 3, 2)
    out = embed_clips(lambda clip: sizes.append(clip.shape[0]) or clip * 2, clips)
    assert sizes == [4, 4, 4]
    torch.testing.assert_close(out, clips * 2)


def test_preserved_buffers_restores_running_stats():
    bn = nn.BatchNorm1d(3)
    bn(torch.randn(8, 3))
    before = [b.clone() for b in bn.buffers()]
    with preserved_buffers([bn]):
        bn(torch.randn(8, 3))
        assert not torch.equal(bn.running_mean, before[0])
    assert all(torch.equal(a, b) for a, b in zip(bn.buffers(), before, strict=True))


def test_embedding_std_detects_collapse():
    spread = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    assert embedding_std(spread) == pytest.approx(1 / math.sqrt(16), rel=0.1)
    assert embedding_std(torch.ones(256, 16) + 1e-9 * spread) < 1e-6
