"""Method plugins: the registry of (self-)supervised training objectives.

Built-in names are in ``_BUILTIN``; third-party packages add methods through the entry-point
group ``rho.methods`` (``name = "package.module:ClassName"``, a subclass of ``SSLMethod``).
A built-in name wins over an entry point of the same name.

``build(name, backbone, feature_dim, **params)`` constructs one; ``params_of(name)`` lists the
keyword parameters it takes with their defaults (what ``harness.config`` validates
``method.*`` keys against).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from harness import plugins
from harness.schema import keyword_params
from methods._ema import cosine_momentum, ema_update, momentum_copy
from methods._heads import MLPHead
from methods._queue import KeyQueue
from methods.base import SSLMethod, StepOutput
from methods.byol import BYOL
from methods.moco import MoCo
from methods.random_init import RandomInit
from methods.simclr import SimCLR
from methods.supervised import Supervised
from methods.swav import SwAV
from methods.videomae import VideoMAE
from methods.vjepa import VJEPA

ENTRY_POINT_GROUP = "rho.methods"

_BUILTIN: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "swav": SwAV,
    "moco": MoCo,
    "byol": BYOL,
    "supervised": Supervised,
    "random": RandomInit,
    "videomae": VideoMAE,
    "vjepa": VJEPA,
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "MLPHead",
    "KeyQueue",
    "SSLMethod",
    "StepOutput",
    "available",
    "build",
    "cosine_momentum",
    "ema_update",
    "get",
    "momentum_copy",
    "params_of",
]


def _is_method(cls: Any) -> bool:
    """Whether an entry point loaded an ``SSLMethod`` subclass."""
    return inspect.isclass(cls) and issubclass(cls, SSLMethod)


def available() -> list[str]:
    """All method names, built-in and from entry points, sorted."""
    return plugins.available(_BUILTIN, ENTRY_POINT_GROUP)


def get(name: str) -> type[SSLMethod]:
    """The method class registered as ``name``.

    Raises:
        ValueError: for an unknown name (listing the choices), or an entry point that is not
            an ``SSLMethod`` subclass.
    """
    return plugins.lookup(
        _BUILTIN, ENTRY_POINT_GROUP, name, kind="method", accept=_is_method, must_be="an SSLMethod subclass"
    )


def params_of(name: str) -> dict[str, Any]:
    """The keyword parameters of method ``name`` (besides backbone and feature_dim) and their defaults.

    None stands for a parameter without a default.
    """
    return keyword_params(get(name).__init__, skip={"backbone", "feature_dim"})


def build(name: str, backbone: nn.Module, feature_dim: int, **params: Any) -> SSLMethod:
    """Construct method ``name`` around ``backbone`` (features [B, feature_dim]).

    Raises:
        ValueError: for an unknown name or a parameter the method does not take (naming the
            ones it does).
    """
    allowed = params_of(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {name!r} takes no parameter {', '.join(unknown)}; it takes: {', '.join(allowed)}"
        )
    return get(name)(backbone, feature_dim, **params)
