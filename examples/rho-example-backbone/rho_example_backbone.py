"""A tiny plain 3D conv net (C3D-like), an example backbone plugin: clips [B, C, T, H, W] -> features [B, D].

``depth`` blocks of 3x3x3 conv -> BatchNorm -> ReLU, the first one striding space by 2 and
each later one doubling the width and striding time and space by 2; global average pooling
over time and space at the end, so any clip size works. D = width * 2^(depth - 1).
"""

from __future__ import annotations

from torch import Tensor, nn


class TinyC3D(nn.Module):
    """The network; ``feature_dim`` is its output width D."""

    def __init__(self, width: int, depth: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(depth):
            out = width * 2**block
            stride = (1, 2, 2) if block == 0 else (2, 2, 2)
            layers += [
                nn.Conv3d(channels, out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels

    def forward(self, clips: Tensor) -> Tensor:
        return self.body(clips).mean(dim=(2, 3, 4))


def build(width: int = 16, depth: int = 3) -> tuple[nn.Module, int]:
    """The entry point: ``(module, feature_dim)``, randomly initialised. ``backbone.width``,
    ``backbone.depth`` in a config are these keyword parameters."""
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    model = TinyC3D(width, depth)
    return model, model.feature_dim
