"""Every backbone builds offline, maps clips to [B, feature_dim] and accepts channels_last_3d."""

import socket

import pytest
import torch

from harness import backbones

# name: (feature_dim, smallest (T, H, W) it accepts; the MViTs: the one size they are built for)
EXPECTED = {
    "r3d_tiny": (128, (1, 1, 1)),
    "slow_r50": (2048, (1, 1, 1)),
    "r2plus1d_r50": (2048, (1, 1, 1)),
    "x3d_xs": (2048, (1, 1, 1)),
    "x3d_s": (2048, (1, 1, 1)),
    "csn_r101": (2048, (1, 1, 1)),
    "slowfast_r50": (2304, (1, 1, 1)),
    "mvit_b": (768, (16, 224, 224)),
    "r3d_18": (512, (1, 1, 1)),
    "r2plus1d_18": (512, (1, 1, 1)),
    "mc3_18": (512, (1, 1, 1)),
    "s3d": (1024, (5, 17, 17)),
    "mvit_v2_s": (768, (16, 224, 224)),
    "swin3d_t": (768, (1, 1, 1)),
}
HEAVY = {"slow_r50", "r2plus1d_r50", "csn_r101", "slowfast_r50", "mvit_b", "mvit_v2_s", "swin3d_t"}


def _names():
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(EXPECTED)]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Building must not download weights: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("backbone tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_available_lists_all_backbones():
    assert backbones.available() == sorted(EXPECTED)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'") as info:
        backbones.build("resnet9000")
    for name in EXPECTED:
        assert name in str(info.value)


@pytest.mark.parametrize("name", _names())
def test_features_on_smallest_input_and_in_channels_last_3d(name):
    expected_dim, smallest = EXPECTED[name]
    torch.manual_seed(0)
    model, feature_dim = backbones.build(name)
    assert feature_dim == expected_dim
    model.eval()
    size = tuple(max(s, m) for s, m in zip(smallest, (4, 32, 32), strict=True))  # where memory format matters
    clips = torch.randn(1, 3, *size)
    with torch.no_grad():
        if size != smallest:
            small = model(torch.randn(1, 3, *smallest))
            assert small.shape == (1, feature_dim) and torch.isfinite(small).all()
        expected = model(clips)
        got = model.to(memory_format=torch.channels_last_3d)(clips.to(memory_format=torch.channels_last_3d))
    assert expected.shape == (1, feature_dim) and torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_mvit_b_input_size_follows_its_build_arguments():
    model, feature_dim = backbones.build("mvit_b", temporal_size=4, spatial_size=32)
    assert model.input_size == (4, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, feature_dim)


def test_r3d_tiny_is_small_and_trains():
    model, feature_dim = backbones.build("r3d_tiny")
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    assert feature_dim == 128
    features = model(torch.randn(4, 3, 8, 64, 64))
    assert features.shape == (4, feature_dim)
    features.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_r3d_tiny_width_sets_feature_dim():
    model, feature_dim = backbones.build("r3d_tiny", width=16)
    assert feature_dim == 64
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 64)
