"""The data pipeline: manifests, ρ-clip sampling, PyAV decoding, per-clip augmentation.

The names below are imported on first use (module ``__getattr__``), not with the package:
``harness.data.dataset`` and ``harness.data.transforms`` import torch, ``harness.data.decode``
PyAV, and commands such as ``rho data import`` read and write CSV files only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.data.dataset import MultiClipDataset
    from harness.data.decode import BadVideo, VideoInfo
    from harness.data.manifest import ManifestError, VideoEntry, read_manifest, write_manifest
    from harness.data.transforms import eval_transform, train_transform

#: public name -> the submodule that defines it
_HOME = {
    "BadVideo": "decode",
    "ManifestError": "manifest",
    "MultiClipDataset": "dataset",
    "VideoEntry": "manifest",
    "VideoInfo": "decode",
    "eval_transform": "transforms",
    "read_manifest": "manifest",
    "train_transform": "transforms",
    "write_manifest": "manifest",
}

__all__ = [
    "BadVideo",
    "ManifestError",
    "MultiClipDataset",
    "VideoEntry",
    "VideoInfo",
    "eval_transform",
    "read_manifest",
    "train_transform",
    "write_manifest",
]  # the keys of _HOME


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` when it is first asked for."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"harness.data.{_HOME[name]}"), name)
    globals()[name] = value
    return value
