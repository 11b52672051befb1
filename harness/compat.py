"""Shims that let pytorchvideo 0.1.5 (the last release) import against current torchvision.

pytorchvideo.transforms imports ``torchvision.transforms.functional_tensor``, which
torchvision renamed to ``_functional_tensor``; alias it before pytorchvideo is imported.
"""

import importlib
import sys
import warnings


def patch_torchvision() -> None:
    """Register the old ``functional_tensor`` module name (idempotent)."""
    name = "torchvision.transforms.functional_tensor"
    if name not in sys.modules:
        sys.modules[name] = importlib.import_module("torchvision.transforms._functional_tensor")


patch_torchvision()

# pytorchvideo decorates models with torch.jit.script, which torch 2.9+ deprecates loudly.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script", category=FutureWarning)
