"""Every backbone builds offline, maps clips to [B, feature_dim] and accepts channels_last_3d; the registry's
parameters and its ``rho.backbones`` entry point."""

import socket

import pytest
import torch
from plugin_dist import install_distribution

from harness import backbones
from harness.config import ConfigError, build_experiment

# name: (feature_dim, smallest (T, H, W) it accepts; the MViTs: the one size they are built for;
# the ViTs: one tubelet)
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
    "vit_tiny": (96, (2, 8, 8)),
    "vit_s": (384, (2, 16, 16)),
    "vit_b": (768, (2, 16, 16)),
    "vit_l": (1024, (2, 16, 16)),
}
HEAVY = {
    "slow_r50",
    "r2plus1d_r50",
    "csn_r101",
    "slowfast_r50",
    "mvit_b",
    "mvit_v2_s",
    "swin3d_t",
    "vit_b",
    "vit_l",
}


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


def test_params_of_are_the_builder_and_the_constructor_keywords_less_its_presets():
    assert backbones.params_of("r3d_tiny") == {"width": 32}
    slow = backbones.params_of("slow_r50")
    assert slow["dropout_rate"] == 0.5 and "stem_conv_stride" in slow
    assert not {"model_depth", "head", "stem_conv_kernel_size"} & set(slow), (
        "what the builder sets is no parameter"
    )
    slowfast = backbones.params_of("slowfast_r50")
    assert slowfast["alpha"] == 4 and "head" not in slowfast
    assert backbones.params_of("r3d_18") == {"num_classes": 400, "zero_init_residual": False}
    assert backbones.params_of("mvit_v2_s")["stochastic_depth_prob"] == 0.2  # torchvision's, not MViT's 0.0


@pytest.mark.parametrize("name", _names())
def test_every_listed_param_is_taken_by_the_builder(name):
    """Passing every parameter params_of lists, at its default, builds a network of the same shape."""
    params = {key: value for key, value in backbones.params_of(name).items() if value is not None}
    model, feature_dim = backbones.build(name, **params)
    default, _ = backbones.build(name)
    assert feature_dim == EXPECTED[name][0]
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    assert shapes == {key: value.shape for key, value in default.state_dict().items()}


_PLUGIN_SOURCE = """
    from torch import nn

    def build_flat(*, dim: int = 6):
        return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, dim)), dim

    def build_fixed():
        return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten()), 3

    NOT_CALLABLE = 3
"""


def _install_plugin(root, monkeypatch, target: str) -> None:
    """A distribution on sys.path: a module and a dist-info folder whose ``rho.backbones`` entry point names ``target``."""
    install_distribution(
        root,
        monkeypatch,
        module="tiny_backbone_module",
        source=_PLUGIN_SOURCE,
        group="rho.backbones",
        name="tiny_backbone",
        target=target,
    )


def test_entry_point_backbone_is_available_validated_and_builds(plugin_root, monkeypatch):
    assert "tiny_backbone" not in backbones.available()
    _install_plugin(plugin_root, monkeypatch, "tiny_backbone_module:build_flat")
    assert "tiny_backbone" in backbones.available()
    assert backbones.params_of("tiny_backbone") == {"dim": 6}
    experiment = build_experiment({"backbone": {"name": "tiny_backbone", "dim": 5}}, check_files=False)
    model, feature_dim = backbones.build(experiment.backbone.name, **experiment.backbone.params)
    assert feature_dim == 5 and model(torch.randn(2, 3, 1, 4, 4)).shape == (2, 5)
    with pytest.raises(
        ConfigError,
        match=r"backbone.dimm = 5 is not allowed: unknown key; did you mean backbone.dim\? tiny_backbone takes: dim",
    ):
        build_experiment({"backbone": {"name": "tiny_backbone", "dimm": 5}}, check_files=False)


def test_entry_point_backbone_without_parameters_says_so(plugin_root, monkeypatch):
    _install_plugin(plugin_root, monkeypatch, "tiny_backbone_module:build_fixed")
    assert backbones.params_of("tiny_backbone") == {}
    with pytest.raises(ConfigError) as info:
        build_experiment({"backbone": {"name": "tiny_backbone", "width": 16}}, check_files=False)
    assert str(info.value).endswith(
        "backbone.width = 16 is not allowed: tiny_backbone takes no parameters; drop backbone.width"
    )


def test_entry_point_that_is_not_callable_is_refused(plugin_root, monkeypatch):
    _install_plugin(plugin_root, monkeypatch, "tiny_backbone_module:NOT_CALLABLE")
    with pytest.raises(ValueError, match="not callable"):
        backbones.build("tiny_backbone")
