"""``ViewDataset``: fixed test-time views of each video for evaluation.

K temporal views (clip starts as SlowFast's test views: ``max_start · i / K``, i = 0 … K−1, rounded
down; the centre one for K = 1) × S spatial views (S = 1: centre crop; S = 3: left/centre/right,
or top/centre/bottom for portrait videos, after resizing the short side; a centre offset
rounds up, as SlowFast's ``uniform_crop``). Deterministic: no randomness at all. Each video is
opened and decoded once for all its views.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from harness.data.decode import BadVideo, Decoder, decode_clips
from harness.data.manifest import ManifestRows, VideoEntry, read_manifest
from harness.data.transforms import MEAN, STD

UNREADABLE = "unreadable"  # the key of an unreadable video's item (why) and of a batch's list of them


def temporal_starts(num_frames: int, span: int, views: int) -> np.ndarray:
    """``views`` start indices: ``floor(max_start · i / views)`` for i < ``views``; one view takes the centre.

    SlowFast's test views (``decoder.get_start_end_idx`` without ``USE_OFFSET_SAMPLING``:
    ``delta * clip_idx / num_clips``, a float start its ``temporal_sampling`` truncates), so the
    last view starts ``max_start / views`` before the end, not at it. One view (our cached
    probe's training clip) is the centre clip, where SlowFast's formula would give 0.
    """
    max_start = max(0, num_frames - span)
    if views == 1:
        return np.array([max_start // 2])
    return (max_start * np.arange(views, dtype=np.int64)) // views


def _centre(length: int, crop: int) -> int:
    """The offset of a centred crop, rounded up (SlowFast ``uniform_crop``: ``ceil((length - size) / 2)``)."""
    return -(-(length - crop) // 2)


def spatial_crops(video: torch.Tensor, crop: int, views: int) -> list[torch.Tensor]:
    """Crops of a resized video [T, C, H, W]: the centre (1) or both ends and the centre (3) of the long side."""
    height, width = video.shape[-2:]
    y, x = _centre(height, crop), _centre(width, crop)
    if views == 1:
        offsets = [(y, x)]
    elif width >= height:
        offsets = [(y, left) for left in (0, x, width - crop)]
    else:
        offsets = [(top, x) for top in (0, y, height - crop)]
    return [TF.crop(video, y, x, crop, crop) for y, x in offsets]


class ViewDataset(Dataset):
    """Test-time views of each manifest video.

    Item: ``clips`` float [K·S, C, T, crop, crop] (temporal-major order), ``label``, ``index``.
    An unreadable video's item is ``index``, ``label`` and ``UNREADABLE`` (why, as ``BadVideo``
    says) without clips; batch items with ``collate_views``. ``bad_files`` is left to the caller
    that batches them (``extract_features`` fills it in the main process, whatever the worker count).
    """

    def __init__(
        self,
        manifest: str | Path | Sequence[VideoEntry],
        frames: int,
        stride: int,
        crop: int,
        short_side: int | None = None,
        temporal_views: int = 1,
        spatial_views: int = 1,
        fps: float | None = None,
        autorotate: bool = True,
        decoder: Decoder | None = None,
    ):
        if spatial_views not in (1, 3):
            raise ValueError(f"spatial_views must be 1 or 3, got {spatial_views}")
        if temporal_views < 1:
            raise ValueError(f"temporal_views must be >= 1, got {temporal_views}")
        from_file = isinstance(manifest, (str, Path))
        self.source = Path(manifest) if from_file else None  # the manifest, when read from one
        self.entries = ManifestRows(read_manifest(manifest) if from_file else manifest)  # see ManifestRows
        self.frames, self.stride, self.crop = frames, stride, crop
        self.short_side = short_side or round(crop * 256 / 224)
        self.temporal_views, self.spatial_views, self.fps = temporal_views, spatial_views, fps
        self.autorotate = autorotate  # turn frames as their display matrix says
        self.decoder = decoder  # the decoding backend (data.decoder; None: PyAV)
        self.bad_files: dict[Path, str] = {}  # unreadable videos passed over, with why

    @property
    def views(self) -> int:
        return self.temporal_views * self.spatial_views

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        entry = self.entries[index]
        try:
            frames, _, _ = decode_clips(
                entry,
                self.frames,
                self.stride,
                self.fps,
                lambda n, span, fps: temporal_starts(n, span, self.temporal_views),
                autorotate=self.autorotate,
                backend=self.decoder,
            )
        except BadVideo as exc:
            return {"label": entry.label, "index": index, UNREADABLE: str(exc)}
        clips = torch.from_numpy(frames)
        views = []
        for clip in clips:
            video = tv_tensors.Video(clip.permute(0, 3, 1, 2))  # [T, C, H, W] uint8
            if min(video.shape[-2:]) != self.short_side:
                video = TF.resize(video, [self.short_side], antialias=True)
            for view in spatial_crops(video, self.crop, self.spatial_views):
                view = TF.normalize(TF.to_dtype(view, torch.float32, scale=True), MEAN, STD)
                views.append(view.as_subclass(torch.Tensor).permute(1, 0, 2, 3))
        return {"clips": torch.stack(views), "label": entry.label, "index": index}


def collate_views(items: list[dict]) -> dict:
    """A batch of ``ViewDataset`` items: the readable ones stacked as the default collate does
    (no ``clips`` key when none is), and ``UNREADABLE``: {row index: why} of the others."""
    readable = [item for item in items if UNREADABLE not in item]
    batch = default_collate(readable) if readable else {}
    batch[UNREADABLE] = {int(item["index"]): item[UNREADABLE] for item in items if UNREADABLE in item}
    return batch
