"""Clip transforms built from torchvision.transforms.v2 on video tensors.

A transform takes one decoded clip, uint8 [T, H, W, 3], and returns float [3, T, H, W]
normalised with the Kinetics mean and std. Random parameters are drawn once per call, so
they are identical across the frames of a clip and independent across clips.

The training pipeline crops (and flips) the uint8 frames first, then converts the small crop
to float once, so the colour operations run on float crops: on uint8 each of them would
convert to float and back (about 2x the cost of the whole pipeline at 32 px, 1.3x at 224 px).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rotate_hue(video: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """Shift the hue of float RGB in [0, 1], [..., 3, H, W], by ``hue_factor`` turns (-0.5..0.5).

    The shift is a rotation of the chroma plane in YIQ space, which keeps luma and is one 3×3
    matrix: about 10× cheaper on a small clip than torchvision's RGB → HSV → RGB round trip
    (0.035 against 0.36 ms for a 4×32×32 clip, one thread; that was a third of the whole
    pipeline's time), and the same family of colour changes.
    """
    angle = -2 * math.pi * hue_factor  # the sign of torchvision's adjust_hue (red towards yellow for > 0)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).to(video.dtype)
    return torch.einsum("ij,...jhw->...ihw", matrix, video).clamp_(0.0, 1.0)


def colour_jitter(
    video: torch.Tensor, params: dict[str, Any], clip_mean: float | None = None
) -> torch.Tensor:
    """Apply ``ColorJitter.make_params``'s factors to float RGB [..., 3, H, W] in their drawn order.

    torchvision's brightness, contrast and saturation kernels, and ``rotate_hue`` for the hue.
    ``clip_mean`` (``colour_frame: frame``): contrast blends towards this luma (the whole
    uncropped clip's, scaled by the brightness steps before it; saturation and hue keep a
    clip's luma) instead of each frame's own mean, as SlowFast's jitter of the whole clip.
    """
    for fn_id in params["fn_idx"].tolist():
        if fn_id == 0 and params["brightness_factor"] is not None:
            video = F.adjust_brightness_image(video, params["brightness_factor"])
            clip_mean = None if clip_mean is None else clip_mean * params["brightness_factor"]
        elif fn_id == 1 and params["contrast_factor"] is not None:
            if clip_mean is None:
                video = F.adjust_contrast_image(video, params["contrast_factor"])
            else:
                factor = params["contrast_factor"]
                video = (video * factor + (1.0 - factor) * clip_mean).clamp_(0.0, 1.0)
        elif fn_id == 2 and params["saturation_factor"] is not None:
            video = F.adjust_saturation_image(video, params["saturation_factor"])
        elif fn_id == 3 and params["hue_factor"] is not None:
            video = rotate_hue(video, params["hue_factor"])
    return video


class ColorJitter(v2.ColorJitter):
    """torchvision's ColorJitter (random order, same factor ranges) with the hue step done by ``rotate_hue``."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(colour_jitter(inpt.as_subclass(torch.Tensor), params), like=inpt)


class RandomGrayscale(v2.RandomGrayscale):
    """``v2.RandomGrayscale`` that converts videos too.

    torchvision 0.29 registers its grayscale kernel for images and plain tensors only, so
    ``v2.RandomGrayscale`` hands a ``tv_tensors.Video`` back unchanged, silently: the paper's
    grayscale augmentation never happened to a clip.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        grey = F.rgb_to_grayscale_image(inpt.as_subclass(torch.Tensor), params["num_input_channels"])
        return tv_tensors.wrap(grey, like=inpt)


JITTER_FACTORS = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's fn_idx order


class Draw:
    """The columns of a clip's parameter row (``TrainClipTransform.draw``)."""

    box = slice(0, 4)  # crop top, left, height, width in source pixels
    flip = 4  # 1: flipped horizontally
    jitter = 5  # 1: colour jitter applied
    order = slice(6, 10)  # the jitter steps' order (ColorJitter's fn_idx)
    factors = slice(10, 14)  # brightness, contrast, saturation, hue factors (NaN: off)
    grayscale = 14  # 1: greyed
    blur = 15  # 1: blurred
    sigma = 16  # the blur's sigma across (x), in crop pixels
    sigma_y = 17  # and down (y): the same but with ``colour_frame: frame`` (sigma in frame pixels)
    clip_mean = 18  # ``colour_frame: frame``: the whole clip's mean luma in [0, 1] (NaN: per frame)


DRAW_SIZE = 19


def _finish() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def _blur_kernel(crop: int) -> int:
    """The Gaussian blur's kernel side: odd, about 10% of the crop as in SimCLR."""
    return max(3, (crop // 10) | 1)


def clip_luma(frames: torch.Tensor) -> float:
    """The mean luma in [0, 1] of a uint8 clip [T, H, W, 3] (torchvision's grayscale weights)."""
    weights = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64)
    return float((frames.reshape(-1, 3).to(torch.float64) @ weights).mean() / 255.0)


class TrainClipTransform:
    """The paper's per-clip augmentation, run by calling torchvision's tensor kernels directly.

    The same steps, random draws and kernels as ``reference_train_transform`` (a
    ``torchvision.transforms.v2.Compose``): random resized crop, flip, float conversion,
    colour jitter (random order; hue by ``rotate_hue``), grayscale, blur, normalisation. The
    draws are made from torch's default generator in v2's order, so both give bit-identical
    clips from the same seed (tested). Skipping v2's per-call machinery (input flattening,
    tv_tensor wrapping, dispatch) makes it 1.4x as fast on a 4x32x32 clip (``rho bench
    augment``, one thread), so the data workers leave more of the CPU to training; the rest is
    the kernels themselves (resize, colour operations, normalisation).
    """

    def __init__(self, crop: int, augment: AugmentConfig | None = None):
        augment = augment or AugmentConfig()
        brightness, contrast, saturation, hue = augment.color_strength
        self.crop = crop
        self.scale = tuple(augment.crop_scale)
        self.ratio = tuple(augment.aspect)
        self._log_ratio = torch.log(torch.tensor(self.ratio))
        self.flip_p = augment.flip
        self.color_p = augment.color_p
        # v2's own argument checks and (min, max) ranges; None where a factor is off
        self.jitter = ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        self.grayscale_p = augment.grayscale_p
        self.blur_p = augment.blur_p
        self.blur_kernel = _blur_kernel(crop)
        self._mean, self._std = list(MEAN), list(STD)
        self.blur_sigma = (0.1, 2.0)
        self.colour_frame = augment.colour_frame

    def _crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``v2.RandomResizedCrop.make_params``: (top, left, height, width), same draws."""
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(self._log_ratio[0], self._log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def draw(self, height: int, width: int, frames: torch.Tensor | None = None) -> torch.Tensor:
        """One clip's random parameters for a ``height`` x ``width`` source, drawn from torch's default
        generator in the order ``__call__`` draws them: a float32 row indexed by ``Draw`` (NaN: a
        jitter factor that is off). ``data.augment.placement: device`` ships these rows with the
        uint8 frames to the training process, whose ``BatchedAugment`` applies them to a batch.
        ``colour_frame: frame`` needs the clip's uint8 ``frames`` [T, H, W, 3] for its mean luma."""
        row = torch.zeros(DRAW_SIZE)
        row[Draw.clip_mean] = math.nan
        if self.colour_frame == "frame":
            if frames is None:
                raise ValueError("colour_frame 'frame' draws need the clip's frames (its mean luma)")
            row[Draw.clip_mean] = clip_luma(frames)
        row[Draw.box] = torch.tensor(self._crop_box(height, width), dtype=torch.float32)
        row[Draw.flip] = float(torch.rand(1) < self.flip_p)
        if self.color_p > 0 and torch.rand(1) < self.color_p:
            params = self.jitter.make_params([])
            row[Draw.jitter] = 1.0
            row[Draw.order] = params["fn_idx"].float()
            factors = [params[f"{name}_factor"] for name in JITTER_FACTORS]
            row[Draw.factors] = torch.tensor([math.nan if f is None else f for f in factors])
        if self.grayscale_p > 0 and torch.rand(1) < self.grayscale_p:
            row[Draw.grayscale] = 1.0
        if self.blur_p > 0 and torch.rand(1) < self.blur_p:
            row[Draw.blur] = 1.0
            sigma = torch.empty(1).uniform_(*self.blur_sigma).item()
            row[Draw.sigma] = row[Draw.sigma_y] = sigma
            if self.colour_frame == "frame":  # sigma in frame pixels: after the crop's resize, per axis
                row[Draw.sigma] = sigma * self.crop / row[Draw.box][3].item()
                row[Draw.sigma_y] = sigma * self.crop / row[Draw.box][2].item()
        return row

    def apply(self, frames: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] → float [3, T, crop, crop] with the parameters ``row`` of ``draw``."""
        video = frames.permute(0, 3, 1, 2)  # [T, 3, H, W]
        top, left, height, width = (int(v) for v in row[Draw.box].tolist())
        video = F.resized_crop_image(
            video,
            top,
            left,
            height,
            width,
            [self.crop, self.crop],
            v2.InterpolationMode.BILINEAR,
            antialias=True,
        )
        if row[Draw.flip]:
            video = F.horizontal_flip_image(video)
        video = F.to_dtype_image(video, torch.float32, scale=True)
        if row[Draw.jitter]:
            factors = [None if math.isnan(f) else f for f in row[Draw.factors].tolist()]
            params = dict(zip((f"{name}_factor" for name in JITTER_FACTORS), factors, strict=True))
            clip_mean = None if math.isnan(row[Draw.clip_mean]) else row[Draw.clip_mean].item()
            video = colour_jitter(video, {"fn_idx": row[Draw.order].long(), **params}, clip_mean)
        if row[Draw.grayscale]:
            video = F.rgb_to_grayscale_image(video, num_output_channels=3)
        if row[Draw.blur]:
            sigmas = [row[Draw.sigma].item(), row[Draw.sigma_y].item()]
            video = F.gaussian_blur_image(video, [self.blur_kernel] * 2, sigmas)
        video = F.normalize_image(video, self._mean, self._std)
        return video.permute(1, 0, 2, 3).contiguous()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.apply(frames, self.draw(frames.shape[1], frames.shape[2], frames))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop={self.crop}, jitter={self.jitter})"


def train_transform(crop: int, augment: AugmentConfig | None = None) -> TrainClipTransform:
    """The paper's per-clip augmentation: random resized crop, flip, colour jitter, grayscale, blur."""
    return TrainClipTransform(crop, augment)


def reference_train_transform(crop: int, augment: AugmentConfig | None = None) -> VideoClipTransform:
    """``train_transform`` as a ``torchvision.transforms.v2`` pipeline: the reference it is tested against."""
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
        jitter = ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        steps.append(v2.RandomApply([jitter], p=augment.color_p))
    if augment.grayscale_p > 0:
        steps.append(RandomGrayscale(augment.grayscale_p))
    if augment.blur_p > 0:
        steps.append(
            v2.RandomApply([v2.GaussianBlur(_blur_kernel(crop), sigma=(0.1, 2.0))], p=augment.blur_p)
        )
    return VideoClipTransform(v2.Compose([*steps, v2.Normalize(MEAN, STD)]))


def eval_transform(crop: int, short_side: int | None = None) -> VideoClipTransform:
    """Resize the short side (default crop × 256/224), then take the centre crop."""
    short_side = short_side or round(crop * 256 / 224)
    return VideoClipTransform(
        v2.Compose([v2.Resize(short_side, antialias=True), v2.CenterCrop(crop), *_finish()])
    )
