"""The method registry: built-ins, parameters, errors, and third-party methods via entry points."""

from __future__ import annotations

import inspect

import pytest
import torch
from plugin_dist import install_distribution

import methods
from methods.simclr import SimCLR

BUILTIN = ["byol", "moco", "random", "simclr", "supervised", "swav", "videomae", "vjepa"]


def test_available_lists_builtins():
    assert set(BUILTIN) <= set(methods.available())
    assert methods.available() == sorted(methods.available())


@pytest.mark.parametrize("name", BUILTIN)
def test_params_of_is_the_constructor_keywords(name):
    params = methods.params_of(name)
    signature = inspect.signature(methods.get(name).__init__).parameters
    assert set(params) == set(signature) - {"self", "backbone", "feature_dim"}
    assert all(params[key] == signature[key].default for key in params)


def test_paper_defaults():
    assert methods.params_of("simclr")["temperature"] == 0.1
    assert (
        methods.params_of("simclr")["hidden_dims"] == (2048, 2048)
        and methods.params_of("simclr")["out_dim"] == 128
    )
    assert methods.params_of("moco")["momentum"] == 0.994 and methods.params_of("moco")["queue_size"] == 65536
    assert methods.params_of("byol")["momentum"] == 0.996 and methods.params_of("byol")["out_dim"] == 256
    assert (
        methods.params_of("swav")["num_prototypes"] == 1000 and methods.params_of("swav")["epsilon"] == 0.05
    )
    assert all(methods.params_of(n)["memory"] == "standard" for n in ("simclr", "swav", "moco", "byol"))


def test_build_returns_the_method_around_the_backbone():
    backbone = torch.nn.Linear(4, 4)
    method = methods.build("simclr", backbone, 4, hidden_dims=(8,), out_dim=3)
    assert type(method) is SimCLR and methods.get("simclr") is SimCLR
    assert method.encoder is backbone


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown method 'simclrr'.*byol, moco"):
        methods.build("simclrr", torch.nn.Identity(), 4)


def test_unknown_parameter_names_the_allowed_ones():
    with pytest.raises(ValueError, match="no parameter temprature.*temperature"):
        methods.build("simclr", torch.nn.Identity(), 4, temprature=0.2)


_PLUGIN_SOURCE = """
    from methods import SSLMethod, StepOutput

    class TinyPlugin(SSLMethod):
        def __init__(self, backbone, feature_dim, *, scale: float = 2.0):
            super().__init__(backbone, feature_dim)
            self.scale = scale

        def training_step(self, batch):
            return StepOutput(self.scale * self.backbone(batch["clips"][:, 0]).mean())

    class NotAMethod:
        pass
"""


def _install_plugin(root, monkeypatch, target: str) -> None:
    """A distribution on sys.path: a module and a dist-info folder whose entry point names ``target``."""
    install_distribution(
        root,
        monkeypatch,
        module="tiny_plugin_module",
        source=_PLUGIN_SOURCE,
        group="rho.methods",
        name="tiny_plugin",
        target=target,
    )


def test_entry_point_plugin_is_available_and_builds(plugin_root, monkeypatch):
    assert "tiny_plugin" not in methods.available()
    _install_plugin(plugin_root, monkeypatch, "tiny_plugin_module:TinyPlugin")
    assert "tiny_plugin" in methods.available()
    assert methods.params_of("tiny_plugin") == {"scale": 2.0}
    method = methods.build("tiny_plugin", torch.nn.Flatten(), 4, scale=3.0)
    assert type(method).__name__ == "TinyPlugin" and method.scale == 3.0
    out = method.training_step({"clips": torch.ones(2, 2, 4)})
    assert out.loss.item() == 3.0


def test_entry_point_that_is_not_a_method_is_refused(plugin_root, monkeypatch):
    _install_plugin(plugin_root, monkeypatch, "tiny_plugin_module:NotAMethod")
    with pytest.raises(ValueError, match="not an SSLMethod"):
        methods.build("tiny_plugin", torch.nn.Identity(), 4)
