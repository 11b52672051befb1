"""Batched training augmentation: ``TrainClipTransform``'s steps on a whole batch at once, on any device.

``data.augment.placement: device`` moves augmentation out of the DataLoader workers: each worker
decodes its clips and draws their parameters with ``TrainClipTransform.draw`` (the same generator,
seed and order as the per-clip path), and ships the uint8 frames with the rows of parameters
(``DeferredAugment``). The training process then augments every clip of the batch in a few
batched tensor operations (``BatchedAugment``) on the training device:

- random resized crop + flip: on GPUs, torch's uint8 antialiased bilinear resize as two per-clip
  matrices of its fixed-point weights (rows, columns; the flip reverses the column matrix),
  applied by batched matrix products to a window around the crops and rounded as the kernel
  rounds; on the CPU torch's uint8 kernel itself, clip by clip (its banded arithmetic beats the
  dense matrices there: 0.08x the per-clip path at 224 px with them);
- colour jitter: each of the four positions of the clips' drawn orders is one blend of the
  batch with per-clip factors plus a hue turn of the clips whose step there is the hue;
  grayscale by index; blur by one grouped convolution with per-clip kernels; normalisation.

With the same draws the output equals the per-clip path's within float tolerance (the crop is
exactly the uint8 kernel's; tested), so both placements train on the same distribution.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as nnf
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as F

from harness.config import AugmentConfig
from harness.data.transforms import (
    _RGB_TO_YIQ,
    _YIQ_TO_RGB,
    MEAN,
    STD,
    Draw,
    TrainClipTransform,
)

FRAMES, DRAWS = "frames", "draws"  # the batch keys of deferred items: uint8 [B, V, T, H, W, 3], [B, V, P]


class DeferredAugment:
    """The worker's half of ``data.augment.placement: device``: draw a clip's parameters, keep its frames.

    ``MultiClipDataset`` calls ``draw`` for each clip under its per-item generator, exactly where
    the per-clip path calls the whole transform, so the draws are the same.
    """

    def __init__(self, crop: int, augment: AugmentConfig | None = None):
        self.clip_transform = TrainClipTransform(crop, augment)

    def draw(self, frames: torch.Tensor) -> torch.Tensor:
        """The parameter row of one uint8 clip [T, H, W, 3]."""
        return self.clip_transform.draw(frames.shape[1], frames.shape[2], frames)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.clip_transform})"


def collate_frames(items: Sequence[dict]) -> dict:
    """The default collate, with each item's uint8 ``frames`` zero-padded at the bottom and right
    to the batch's largest frame (videos of one dataset may differ in size; every crop box lies in
    its own video's frame, so the padding is never read)."""
    if FRAMES not in items[0]:
        return default_collate(items)
    height = max(item[FRAMES].shape[-3] for item in items)
    width = max(item[FRAMES].shape[-2] for item in items)
    padded = []
    for item in items:
        frames = item[FRAMES]
        pad = (0, 0, 0, width - frames.shape[-2], 0, height - frames.shape[-3])
        padded.append({**item, FRAMES: nnf.pad(frames, pad) if any(pad) else frames})
    return default_collate(padded)


def resize_weights(start: torch.Tensor, length: torch.Tensor, window: int, size: int) -> torch.Tensor:
    """Torch's antialiased bilinear resize (``interpolate(..., antialias=True)``) of ``length[n]``
    pixels from ``start[n]`` of a ``window`` to ``size``, as its uint8 kernel runs it: matrices
    [N, size, window] of integer weights, and their fixed-point bits [N].

    The triangle filter is stretched by the scale when shrinking (that is the antialiasing), each
    output's taps are normalised over those inside the crop, and the weights are ``w * 2^bits``
    rounded, with the most bits that keep each clip's largest weight within int16.
    """
    dtype = torch.float64
    length = length.to(dtype).view(-1, 1, 1)
    scale = length / size
    shrinking = scale >= 1
    support = torch.where(shrinking, scale, torch.ones_like(scale))  # the filter's half-width
    inverse = torch.where(shrinking, 1.0 / scale, torch.ones_like(scale))
    centre = scale * (torch.arange(size, dtype=dtype, device=length.device).view(1, -1, 1) + 0.5)
    first = torch.floor((centre - support + 0.5).clamp(min=0))
    last = torch.minimum(torch.floor(centre + support + 0.5), length)  # one past the last tap
    tap = torch.arange(window, dtype=dtype, device=length.device).view(1, 1, -1)
    tap = tap - start.to(dtype).view(-1, 1, 1)
    weights = (1 - ((tap - centre + 0.5) * inverse).abs()).clamp_(min=0) * ((tap >= first) & (tap < last))
    weights = weights / weights.sum(-1, keepdim=True)
    largest = weights.amax(dim=(1, 2)).view(-1, 1)
    bits = torch.arange(22, device=weights.device, dtype=dtype)
    bits = (torch.floor(0.5 + largest * 2 ** (bits + 1)) < 2**15).sum(1).to(dtype)
    return torch.floor(0.5 + weights * 2 ** bits.view(-1, 1, 1)), bits


def _fixed_point_round(total: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Sums of integer weights times uint8 levels back to uint8 levels as the kernel rounds them:
    (sum + half) >> bits, with ``bits`` [N] per clip. The sums are integers below 2^24, exact in
    float32 on the CPU; CUDA runs them in float64 (its float32 products may be TF32)."""
    half = 2 ** (bits.to(total.dtype).view(-1, *[1] * (total.dim() - 1)) - 1)
    return total.add_(half).div_(2 * half).floor_().clamp_(0, 255)  # dividing by 2^bits is exact


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """No TF32 inside (CUDA's float32 products and convolutions; the runtime allows it for
    training): the luma, hue and blur products stay float32 as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """[N, size] 1-D kernels as torchvision's ``gaussian_blur`` makes them, one per sigma."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=size, device=sigma.device)
    return torch.softmax(-(x.view(1, -1) / sigma.view(-1, 1)).pow(2), dim=1)


def _grey(video: torch.Tensor) -> torch.Tensor:
    """torchvision's luma of float RGB [..., H, W, 3] → [..., H, W, 1]."""
    return video @ torch.tensor([[0.2989], [0.587], [0.114]], device=video.device)


def _factor(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1, 1)


def _blend(video: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's blend ``factor * video + (1 - factor) * other``, clamped, as one lerp (exact at factor 1)."""
    return torch.lerp(other, video, factor).clamp_(0.0, 1.0)


def _hue(video: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``rotate_hue`` with a per-clip turn."""
    angle = -2 * math.pi * factor.double()
    cos, sin = angle.cos().float(), angle.sin().float()
    rotation = torch.zeros(len(factor), 3, 3, device=video.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    yiq, rgb = _RGB_TO_YIQ.to(video.device), _YIQ_TO_RGB.to(video.device)
    matrix = rgb @ rotation @ yiq
    return torch.einsum("nij,nthwj->nthwi", matrix, video).clamp_(0.0, 1.0)


class BatchedAugment:
    """``TrainClipTransform`` on a batch: uint8 frames [N, T, H, W, 3] on any device + their
    parameter rows [N, P] (``TrainClipTransform.draw``, on the CPU) → float [N, 3, T, crop, crop]
    on the frames' device, channels last in memory."""

    RESIZES = ("matrix", "kernel")

    def __init__(self, crop: int, augment: AugmentConfig | None = None, resize: str | None = None):
        """``resize``: ``matrix`` (the crop as batched matrix products, the default on GPUs) or
        ``kernel`` (torch's uint8 resize kernel clip by clip, the per-clip path's own: the default on
        the CPU, where its banded arithmetic beats dense matrices over the crop window)."""
        if resize not in (None, *self.RESIZES):
            raise ValueError(f"resize must be one of {self.RESIZES} or None, got {resize!r}")
        clip_transform = TrainClipTransform(crop, augment)
        self.crop, self.blur_kernel, self.resize = crop, clip_transform.blur_kernel, resize

    def crop_kernel(self, frames: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """``crop_resize_flip`` by torch's uint8 resize kernel, one call per clip (the CPU default)."""
        shape = (frames.shape[0], frames.shape[1], self.crop, self.crop, 3)
        out = torch.empty(shape, dtype=torch.uint8, device=frames.device)
        for index, (clip, row) in enumerate(zip(frames, draws.tolist(), strict=True)):
            top, left, height, width = (int(v) for v in row[Draw.box])
            video = F.resized_crop_image(
                clip.permute(0, 3, 1, 2), top, left, height, width, [self.crop, self.crop], antialias=True
            )
            out[index] = (video.flip(-1) if row[Draw.flip] else video).permute(0, 2, 3, 1)
        return out.float()

    def crop_resize_flip(self, frames: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Each clip's crop box, resized to crop x crop and flipped where drawn: float [N, T, crop, crop, 3]
        of uint8 levels (0..255), the per-clip path's uint8 resize exactly: columns first, rounded,
        then rows (the kernel's two passes), each a batched matrix product over a window around the boxes.
        ``draws`` are on the CPU: the window's geometry is read from them without waiting on the device."""
        n, frames_n, height, width, _ = frames.shape
        device = frames.device
        top, left, box_h, box_w = draws[:, Draw.box].round().long().unbind(1)
        rows, cols = int(box_h.max()), int(box_w.max())  # one window for all: the largest box's size
        first_row = torch.minimum(top, torch.full_like(top, height - rows))
        first_col = torch.minimum(left, torch.full_like(left, width - cols))
        starts = torch.stack([first_row, first_col], 1).tolist()
        window = torch.stack(
            [clip[:, r : r + rows, c : c + cols] for clip, (r, c) in zip(frames, starts, strict=True)]
        )
        dtype = torch.float64 if frames.device.type == "cuda" else torch.float32
        on = {"device": device}
        row_weights, row_bits = resize_weights((top - first_row).to(**on), box_h.to(**on), rows, self.crop)
        col_weights, col_bits = resize_weights((left - first_col).to(**on), box_w.to(**on), cols, self.crop)
        flip = (draws[:, Draw.flip] > 0).view(-1, 1, 1).to(**on)
        col_weights = torch.where(flip, col_weights.flip(1), col_weights)
        # columns: [N, T, rows, 3, cols] @ [N, cols, crop] (the channel/column swap is the one copy)
        window = window.transpose(-1, -2).contiguous().to(dtype).view(n, -1, cols)
        wide = torch.bmm(window, col_weights.to(dtype).transpose(1, 2))
        wide = _fixed_point_round(wide, col_bits).view(n, frames_n, rows, 3 * self.crop)
        # rows: [N, 1, crop, rows] @ [N, T, rows, 3 * crop]
        out = _fixed_point_round(torch.matmul(row_weights.to(dtype)[:, None], wide), row_bits)
        out = out.view(n, frames_n, self.crop, 3, self.crop).transpose(-1, -2)
        return out.to(torch.float32, memory_format=torch.contiguous_format)  # [N, T, crop, crop, 3]

    def colour(self, video: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Colour jitter (each clip's steps in its drawn order), grayscale and blur on float [N, T, H, W, 3] in [0, 1].

        Brightness, contrast and saturation are each a blend with something (black, the frame's
        mean luma, the pixel's luma), so each of the four positions is one blend of the whole batch
        with per-clip factors (1: the clip's step there is another, or it is not jittered) and a
        hue turn of the clips whose step there is the hue. ``draws`` are on the CPU (which clips
        take which step is decided there, without waiting on the device).
        """
        on = {"device": video.device}
        jittered = draws[:, Draw.jitter] > 0
        order = draws[:, Draw.order].round().long()
        factors = draws[:, Draw.factors]
        clip_mean = draws[:, Draw.clip_mean].clone()  # colour_frame frame: the whole clip's luma
        whole = ~clip_mean.isnan()
        for position in range(4):
            step = order[:, position]
            factor = factors.gather(1, step.view(-1, 1)).flatten()
            active = jittered & ~factor.isnan()
            blend = active & (step < 3)
            if blend.any():
                grey = _grey(video)
                mean = grey.mean(dim=(-3, -2, -1), keepdim=True)  # per frame, as torchvision's contrast
                if whole.any():
                    reference = torch.nan_to_num(clip_mean).view(-1, 1, 1, 1, 1).to(**on, dtype=mean.dtype)
                    mean = torch.where(_factor(whole).to(**on).bool(), reference, mean)
                other = torch.where(_factor(step == 1).to(**on), mean, grey) * _factor(step != 0).to(**on)
                ratio = _factor(torch.where(blend, factor, torch.ones_like(factor))).to(**on)
                video = _blend(video, other, ratio)
            brightened = active & (step == 0) & whole
            clip_mean[brightened] *= factor[brightened]  # brightness scales the luma the contrast sees
            index = (active & (step == 3)).nonzero().flatten()
            if len(index):
                video[index.to(**on)] = _hue(video[index.to(**on)], factor[index].to(**on))
        index = (draws[:, Draw.grayscale] > 0).nonzero().flatten().to(**on)
        if len(index):
            video[index] = _grey(video[index]).expand(-1, -1, -1, -1, 3)
        blurred = (draws[:, Draw.blur] > 0).nonzero().flatten()
        if len(blurred):
            index = blurred.to(**on)
            video[index] = self.blur(
                video[index], draws[blurred, Draw.sigma].to(**on), draws[blurred, Draw.sigma_y].to(**on)
            )
        return video

    def blur(
        self, video: torch.Tensor, sigma: torch.Tensor, sigma_y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gaussian blur of float [S, T, H, W, 3] with sigma [S] across and ``sigma_y`` [S] down (None:
        the same): one grouped convolution, reflect padding."""
        s, t, h, w, c = video.shape
        across = gaussian_kernels(sigma.to(video.device), self.blur_kernel)
        down = across if sigma_y is None else gaussian_kernels(sigma_y.to(video.device), self.blur_kernel)
        kernel2d = down.unsqueeze(-1) * across.unsqueeze(-2)  # [S, k (rows), k (columns)]
        weight = kernel2d.repeat_interleave(t * c, dim=0).unsqueeze(1)  # [S*T*3, 1, k, k]
        half = self.blur_kernel // 2
        planes = video.permute(0, 1, 4, 2, 3).reshape(1, s * t * c, h, w)
        padded = nnf.pad(planes, [half] * 4, mode="reflect")
        return nnf.conv2d(padded, weight, groups=s * t * c).view(s, t, c, h, w).permute(0, 1, 3, 4, 2)

    CPU_CHUNK = 2**20  # float elements per chunk on the CPU (4 MiB): the chunk's passes stay in cache

    def __call__(self, frames: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        draws = draws.to("cpu", torch.float32)
        on_cpu = frames.device.type == "cpu"
        resize = self.resize or ("kernel" if on_cpu else "matrix")
        crop = self.crop_kernel if resize == "kernel" else self.crop_resize_flip
        out = torch.empty(len(frames), frames.shape[1], self.crop, self.crop, 3, device=frames.device)
        # on the CPU a few clips at a time: each step is a pass over memory, and a whole batch of
        # large clips does not stay in cache between passes (the per-clip path's one clip does)
        chunk = max(1, self.CPU_CHUNK // out[0].numel()) if on_cpu else len(frames)
        mean = torch.tensor(MEAN, device=frames.device)
        std = torch.tensor(STD, device=frames.device)
        with full_float32():
            for start in range(0, len(frames), chunk):
                part = slice(start, start + chunk)
                video = self.colour(crop(frames[part], draws[part]).div_(255.0), draws[part])
                out[part] = video.sub_(mean).div_(std)
        return out.permute(0, 4, 1, 2, 3)  # [N, 3, T, crop, crop], channels last in memory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop={self.crop})"


class DeviceAugment:
    """The training process's half of ``data.augment.placement: device``: a batch of deferred
    items → the batch the method trains on, its ``clips`` [B, V, 3, T, crop, crop] float made on
    ``device`` (each DDP rank augments its own batch), laid out so that each view ``clips[:, v]``
    is channels_last_3d where ``channels_last`` (CUDA)."""

    def __init__(
        self,
        crop: int,
        augment: AugmentConfig | None,
        device: torch.device | str,
        channels_last: bool = False,
    ):
        self.augment = BatchedAugment(crop, augment)
        self.device, self.channels_last = torch.device(device), channels_last

    def __call__(self, batch: dict) -> dict:
        if FRAMES not in batch:
            return batch
        out = {k: v for k, v in batch.items() if k not in (FRAMES, DRAWS)}
        frames = batch[FRAMES].to(self.device, non_blocking=True)
        b, v = frames.shape[:2]
        clips = self.augment(frames.flatten(0, 1), batch[DRAWS].flatten(0, 1))  # the draws stay on the CPU
        if self.channels_last:  # memory order [V, B, T, H, W, C]: each view clips[:, v] is channels_last_3d
            views = clips.permute(0, 2, 3, 4, 1).unflatten(0, (b, v)).transpose(0, 1).contiguous()
            out["clips"] = views.permute(1, 0, 5, 2, 3, 4)
        else:
            out["clips"] = clips.unflatten(0, (b, v)).contiguous()
        return out
