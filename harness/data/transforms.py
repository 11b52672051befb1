"""Clip transforms built from torchvision.transforms.v2 on video tensors.

A transform takes one decoded clip, uint8 [T, H, W, 3], and returns float [3, T, H, W]
normalised with the Kinetics mean and std. Random parameters are drawn once per call, so
they are identical across the frames of a clip and independent across clips.

The training pipeline crops (and flips) the uint8 frames first, then converts the small crop
to float once, so the colour operations run on float crops: on uint8 each of them would
convert to float and back (about 2x the cost of the whole pipeline at 32 px, 1.3x at 224 px).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.config import AugmentConfig

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)

ClipTransform = Callable[[torch.Tensor], torch.Tensor]


class VideoClipTransform:
    """uint8 [T, H, W, 3] → v2 pipeline on a ``tv_tensors.Video`` → float [3, T, H, W]."""

    def __init__(self, pipeline: v2.Transform):
        self.pipeline = pipeline

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        video = tv_tensors.Video(frames.permute(0, 3, 1, 2))
        out = self.pipeline(video)
        return out.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def _finish() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def train_transform(crop: int, augment: AugmentConfig | None = None) -> VideoClipTransform:
    """The paper's per-clip augmentation: random resized crop, flip, colour jitter, grayscale, blur."""
    augment = augment or AugmentConfig()
    brightness, contrast, saturation, hue = augment.color_strength
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(
            crop, scale=tuple(augment.crop_scale), ratio=tuple(augment.aspect), antialias=True
        ),
        v2.RandomHorizontalFlip(augment.flip),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if augment.color_p > 0:
        jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        steps.append(v2.RandomApply([jitter], p=augment.color_p))
    if augment.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(augment.grayscale_p))
    if augment.blur_p > 0:
        kernel = max(3, (crop // 10) | 1)  # odd, about 10% of the crop as in SimCLR
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=augment.blur_p))
    return VideoClipTransform(v2.Compose([*steps, v2.Normalize(MEAN, STD)]))


def eval_transform(crop: int, short_side: int | None = None) -> VideoClipTransform:
    """Resize the short side (default crop × 256/224), then take the centre crop."""
    short_side = short_side or round(crop * 256 / 224)
    return VideoClipTransform(
        v2.Compose([v2.Resize(short_side, antialias=True), v2.CenterCrop(crop), *_finish()])
    )
