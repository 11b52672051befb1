"""Decoding ρ clips per video: MultiClipDataset vs pytorchvideo's per-clip ``get_clip`` vs the forward-decode limit.

For every item, the three decoders get the same clip starts (those MultiClipDataset drew):

- ours: ``MultiClipDataset[i]`` without augmentation (float clips in [0, 1]) and with the
  training augmentation (``train_transform``), one process, one container open per item;
- pytorchvideo (the naive way): for each clip, ``EncodedVideo.from_path`` (reads the file,
  opens it), ``get_clip(start, end)`` (seeks, decodes and converts to RGB every frame of the
  clip's span) and T frames at stride τ picked from them;
- the limit: one open, one forward decode from the first frame to the last frame needed,
  RGB conversion of exactly the needed frames, no seeking.

Clips/s counts decoded clips (ρ per item; ρ = 1 is one decoded clip, which ours returns as
two augmented views). The timings are interleaved item by item, so load on a shared machine
hits all decoders alike.
"""

from __future__ import annotations

import av
import numpy as np
import torch

from harness.compat import patch_torchvision
from harness.data import MultiClipDataset, train_transform
from harness.data.decode import frame_rgb
from harness.speed import Check, SpeedContext, SpeedResult
from harness.speed.media import Stopwatch, textured_videos

TITLE = "clips/s decoding ρ clips: MultiClipDataset vs pytorchvideo get_clip vs one forward decode"
GOAL = "at ρ = 4, at least 3x pytorchvideo's per-clip get_clip and within 1.3x of the forward-decode limit"
ORDER = 1
PARAMS = {"items": "items per ρ (default 24; quick 3)", "videos": "videos (default 8; quick 2)"}


def pytorchvideo_clips(
    path: str, starts: np.ndarray, frames: int, stride: int, fps: float
) -> list[torch.Tensor]:
    """The naive way: one ``EncodedVideo`` per clip, ``get_clip`` over its span, T frames at stride τ."""
    patch_torchvision()  # pytorchvideo 0.1.5 against current torchvision
    from pytorchvideo.data.encoded_video import EncodedVideo

    clips = []
    span = ((frames - 1) * stride + 1) / fps
    for start in starts:
        video = EncodedVideo.from_path(path, decode_audio=False, decoder="pyav")
        try:
            decoded = video.get_clip(float(start), float(start) + span)["video"]  # [C, n, H, W] float 0..255
        finally:
            video.close()
        picked = torch.arange(frames) * stride
        picked = picked.clamp(max=decoded.shape[1] - 1)
        clips.append(decoded[:, picked] / 255)
    return clips


def forward_limit(path: str, starts: np.ndarray, frames: int, stride: int, fps: float) -> np.ndarray:
    """One open, decode forward to the last frame needed, RGB only for needed frames: uint8 [n, T, H, W, 3]."""
    wanted = (
        np.round(np.asarray(starts) * fps).astype(np.int64)[:, None] + stride * np.arange(frames)
    ).ravel()
    needed = set(wanted.tolist())
    last = max(needed)
    found: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        time_base = float(stream.time_base)
        origin = stream.start_time or 0
        for frame in container.decode(stream):
            index = int(round((frame.pts - origin) * time_base * fps))
            if index in needed:
                found[index] = frame_rgb(frame)
            if index >= last:
                break
    tail = found[max(found)]
    picked = np.stack([found.get(i, tail) for i in wanted])
    return picked.reshape(len(starts), frames, *picked.shape[1:])


def run(ctx: SpeedContext) -> SpeedResult:
    quick = ctx.quick
    frames, stride = (4, 4) if quick else (8, 8)
    videos = ctx.param("videos", 2 if quick else 8)
    items = ctx.param("items", 3 if quick else 24)
    seconds, fps = (2.0, 30) if quick else (10.0, 30)
    width, height, crop = (96, 64, 48) if quick else (320, 240, 224)
    entries = textured_videos(ctx.workdir / "videos", videos, seconds, fps, width, height)
    torch.set_num_threads(1)  # one decoding process, as in a DataLoader worker

    result = ctx.result(
        [
            "ρ",
            "ours clips/s",
            "ours+aug clips/s",
            "pytorchvideo clips/s",
            "limit clips/s",
            "ours / pytorchvideo",
            "limit / ours",
            "frames = limit",
        ]
    )
    for rho in (1, 2, 4):
        plain = MultiClipDataset(entries, rho, frames, stride, seed=rho)
        augmented = MultiClipDataset(entries, rho, frames, stride, transform=train_transform(crop), seed=rho)
        watch = Stopwatch()
        identical = True
        for item in range(-1, items):  # item -1 warms up caches and imports, untimed
            key = (0, item % len(entries))
            path = str(entries[item % len(entries)].path)
            with watch("ours"):
                ours = plain[key]
            with watch("ours+aug"):
                augmented[key]
            starts = ours["starts"].numpy()[:rho]
            with watch("pytorchvideo"):
                pytorchvideo_clips(path, starts, frames, stride, fps)
            with watch("limit"):
                limit = forward_limit(path, starts, frames, stride, fps)
            identical &= bool(
                torch.equal(
                    (ours["clips"][:rho] * 255).round().to(torch.uint8),
                    torch.from_numpy(limit).permute(0, 4, 1, 2, 3),
                )
            )
            if item == -1:
                watch.seconds.clear()
        clips = rho * items
        speed = {
            label: clips / watch.seconds[label] for label in ("ours", "ours+aug", "pytorchvideo", "limit")
        }
        result.rows.append(
            [
                rho,
                speed["ours"],
                speed["ours+aug"],
                speed["pytorchvideo"],
                speed["limit"],
                speed["ours"] / speed["pytorchvideo"],
                speed["limit"] / speed["ours"],
                identical,
            ]
        )
    at4 = result.row(**{"ρ": 4})
    result.checks = [
        Check("ours / pytorchvideo at ρ=4", at4["ours / pytorchvideo"], ">=", 3.0),
        Check("limit / ours at ρ=4", at4["limit / ours"], "<=", 1.3),
    ]
    result.notes = [
        f"{videos} videos of {seconds:g} s at {fps} fps, {width}x{height}, H.264 (x264 defaults: GOP 250, "
        f"B-frames, crf 23); T x τ = {frames} x {stride}; {items} items per ρ; global sampling; one process, "
        f"one torch thread; augmentation = the training transform at crop {crop}.",
        "`frames = limit`: ours (without augmentation) gives bit-identical frames to the forward decode.",
    ]
    return result
