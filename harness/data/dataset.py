"""``MultiClipDataset``: ρ clips per video, decoded with PyAV, each clip augmented on its own.

An item is a dict:

- ``clips`` float [V, C, T, H, W] with V = max(ρ, 2): ρ clips in temporal order (earliest
  start first; ``clip_order="shuffled"``: in a random order per item, as SlowFast); ρ = 1
  gives two independently augmented views of one clip;
- ``label`` int, ``index`` int (the manifest row actually used);
- ``starts`` float [V], the clips' start times in seconds (in the clips' order);
- ``padded`` int, frames that repeat a video's last frame because it is shorter than a clip;
- ``skipped`` int, unreadable videos passed over to produce this item;
- ``bad_videos`` str, those videos and why (JSON ``[[path, reason], ...]``: a string, so that
  the default collate keeps it), for ``note_skips``;
- ``bytes_read`` int, the compressed bytes decoded to produce this item (``decode_clips``' count:
  PyAV's demuxed packets; 0 for frames from ``data.cache``), for the run's cost accounting.

With a ``DeferredAugment`` transform (``data.augment.placement: device``) ``clips`` is replaced
by ``frames``, uint8 [V, T, H, W, 3] as decoded, and ``draws`` [V, P], each clip's augmentation
parameters drawn as the per-clip transform draws them; ``collate_frames`` batches such items and
``DeviceAugment`` turns the batch into ``clips`` in the training process.

Randomness (clip starts, augmentation and the clip order) comes from a generator seeded by
(seed, epoch, index), so an item is the same whatever the worker count or order; pass
``(epoch, index)`` as the key to vary it by epoch. An unreadable, truncated or zero-frame
video is skipped and the item is taken from the next row. Each bad file is warned about once
per dataset and counted in ``bad_files``: directly when the item is read in this process, and
from a batch's ``bad_videos`` through ``note_skips`` when DataLoader workers (each with its own
copy of the dataset, new ones every epoch) read it; workers never warn themselves.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from harness.config import CLIP_ORDERS, T_MAX_MODES, DataConfig
from harness.data.batched import DRAWS, FRAMES, DeferredAugment
from harness.data.clip_starts import clip_order, clip_starts, gap_clip_starts
from harness.data.decode import BadVideo, BytesRead, Decoder, FrameCache, decode_clips, decoder
from harness.data.manifest import ManifestRows, VideoEntry, read_manifest
from harness.data.transforms import ClipTransform
from harness.errors import RhoError

log = logging.getLogger(__name__)

MAX_SKIPS = 32


class UnreadableVideos(RhoError, RuntimeError):
    """Every video of a manifest, or ``MAX_SKIPS`` in a row, failed to decode; the message names
    the manifest and ``rho data check``.

    Raised in a DataLoader worker, it comes back to the training process rebuilt from torch's
    "Caught ... in DataLoader worker ... Original Traceback ..." text; that keeps only the
    original one-line message, so ``rho`` still prints one line.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def unreadable_videos(
    source: str | Path | None, videos: int, bad: list[tuple[str, str]], start: int = 0
) -> UnreadableVideos:
    """The error for rows that all failed to decode: ``bad`` (path, reason) in a row from row
    ``start`` of the ``videos`` rows of the manifest ``source`` (None: not known)."""
    manifest = str(source) if source is not None else "the manifest"
    check = f"`rho data check {source}`" if source is not None else "`rho data check` on the manifest"
    first = bad[0][1] if bad else ""
    if len(bad) >= videos:
        return UnreadableVideos(
            f"every one of the {videos} videos of {manifest} failed to decode (first: {first}); "
            f"run {check} to see why each fails, then fix or replace the files"
        )
    return UnreadableVideos(
        f"{len(bad)} videos in a row of {manifest}, from row {start + 1} of {videos}, failed to decode "
        f"(first: {first}); run {check} to list the broken files"
    )


def sampling_options(data: DataConfig) -> dict:
    """``MultiClipDataset``'s sampling and decoding keywords as the ``data.*`` keys set them (t_max,
    fps, seeking, rotation, clip order, the decoder): what training and ``rho data profile`` share."""
    return dict(
        t_max=data.t_max,
        fps=data.fps,
        seek_threshold=data.seek_threshold,
        autorotate=data.autorotate,
        clip_order=data.clip_order,
        t_max_mode=data.t_max_mode,
        t_min=data.t_min,
        decoder=decoder(data.decoder, data.decode_device),
        decode_short_side=data.decode_short_side,
    )


class MultiClipDataset(Dataset):
    """ρ clips of T frames at stride τ from each video of a manifest.

    Args:
        manifest: a manifest CSV path, or rows already read.
        clips: ρ ≥ 1.
        frames: T ≥ 1.
        stride: τ ≥ 1, in frames of ``fps``.
        t_max: the largest distance in seconds between two clip starts (None: global); with
            ``t_max_mode="gap"``, the largest gap from one clip's last frame to the next
            clip's first frame in time (SlowFast's ``DELTA_CLIPS_MAX``, here in seconds).
        transform: per-clip transform, uint8 [T, H, W, 3] → float [C, T, H, W]; None gives
            float [3, T, H, W] in [0, 1] without augmentation; a ``DeferredAugment`` only draws.
        seed: base seed of the per-item generators.
        fps: resample to this rate (None: each video's own rate).
        seek_threshold: None: the decoder seeks where the keyframe index says it saves work
            (``decode_times``); a number: the gap (s) above which it seeks rather than decodes forward.
        cache: keep each video decoded in this cache after its first read (``preload`` fills
            it up front); the items are the same with or without it.
        min_views: V is max(ρ, min_views). 2 (the default) makes ρ = 1 items two augmentations
            of one clip, the SSL positive pair; 1 gives supervised training one clip per video.
        autorotate: turn frames as the video's display matrix says (``data.autorotate``).
        clip_order: ``"time"`` (earliest clip first) or ``"shuffled"`` (a random order per
            item from its generator, SlowFast's ``temporally_rnd_clips``).
        t_max_mode: what ``t_max`` bounds: ``"start_to_start"`` or ``"gap"`` (see ``t_max``).
        t_min: ``t_max_mode="gap"`` only: the smallest such gap in seconds, negative for an
            overlap (SlowFast's ``DELTA_CLIPS_MIN``; None: unbounded).
        decoder: the decoding backend (``harness.data.decode.decoder``, ``data.decoder``; None: PyAV).
        decode_short_side: scale frames in the decoder to at most this short side
            (``data.decode_short_side``; None: full size).
        source: the manifest file the rows come from, for errors (default: ``manifest`` when
            it is a path).
    """

    def __init__(
        self,
        manifest: str | Path | Sequence[VideoEntry],
        clips: int,
        frames: int,
        stride: int,
        t_max: float | None = None,
        transform: ClipTransform | DeferredAugment | None = None,
        seed: int = 0,
        fps: float | None = None,
        seek_threshold: float | None = None,
        cache: FrameCache | None = None,
        min_views: int = 2,
        autorotate: bool = True,
        clip_order: str = "time",
        t_max_mode: str = "start_to_start",
        t_min: float | None = None,
        decoder: Decoder | None = None,
        decode_short_side: int | None = None,
        source: str | Path | None = None,
    ):
        if clips < 1 or frames < 1 or stride < 1:
            raise ValueError(f"clips, frames and stride must be >= 1, got {clips}, {frames}, {stride}")
        if t_max is not None and t_max < 0:
            raise ValueError(f"t_max must be >= 0 or None, got {t_max}")
        if clip_order not in CLIP_ORDERS:
            raise ValueError(f"clip_order must be one of {', '.join(CLIP_ORDERS)}, got {clip_order!r}")
        if t_max_mode not in T_MAX_MODES:
            raise ValueError(f"t_max_mode must be one of {', '.join(T_MAX_MODES)}, got {t_max_mode!r}")
        if t_min is not None and t_max_mode != "gap":
            raise ValueError("t_min bounds the gap between clips: it needs t_max_mode='gap'")
        if t_min is not None and t_max is not None and t_min > t_max:
            raise ValueError(f"t_min ({t_min}) must be <= t_max ({t_max})")
        self.clip_order, self.t_max_mode, self.t_min = clip_order, t_max_mode, t_min
        # columns, not row objects: DataLoader workers read them without copying their pages
        self.entries = ManifestRows(
            read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
        )
        self.clips, self.frames, self.stride = clips, frames, stride
        self.t_max, self.transform, self.seed = t_max, transform, seed
        self.fps, self.seek_threshold, self.cache = fps, seek_threshold, cache
        if min_views not in (1, 2):
            raise ValueError(f"min_views must be 1 or 2, got {min_views}")
        self.min_views, self.autorotate = min_views, autorotate
        self.decoder, self.decode_short_side = decoder, decode_short_side
        self.bad_files: set[Path] = set()
        if source is None and isinstance(manifest, (str, Path)):
            source = manifest
        self.source = source

    def preload(self) -> None:
        """Decode every video into the cache now (before DataLoader workers fork, so they share it).

        Unreadable videos are skipped with a warning, as in training. Raises ``CacheFull`` when the
        videos do not fit in the cache's limit.
        """
        if self.cache is None:
            raise ValueError("preload needs a FrameCache (cache=...)")
        for entry in self.entries:
            try:
                self.cache.get(entry.path)
            except BadVideo as exc:
                self._skip(entry.path, str(exc))

    @property
    def views(self) -> int:
        """V, clips per item: max(ρ, min_views)."""
        return max(self.clips, self.min_views)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        bad: list[tuple[str, str]] = []
        read = BytesRead()  # compressed bytes decoded for this item (bad videos' attempts included)
        for skipped in range(min(MAX_SKIPS, len(self.entries))):
            row = (index + skipped) % len(self.entries)
            entry = self.entries[row]
            rng = np.random.default_rng([self.seed, epoch, row])
            try:
                views, starts, padded = self._load(entry, rng, read)
            except BadVideo as exc:
                bad.append((str(entry.path), str(exc)))
                if get_worker_info() is None:  # in a worker: the batch carries it to note_skips
                    self._skip(entry.path, str(exc))
                continue
            return {
                **views,
                "label": entry.label,
                "index": row,
                "starts": torch.as_tensor(starts, dtype=torch.float32),
                "padded": padded,
                "skipped": skipped,
                "bad_videos": json.dumps(bad),
                "bytes_read": read.count,
            }
        raise unreadable_videos(self.source, len(self.entries), bad, index)

    def note_skips(self, batch: dict) -> dict:
        """Warn about and count the bad videos that ``batch`` (or one item) passed over, each file
        once: the process that reads a DataLoader's batches calls this for the workers' skips.
        Returns ``batch``, so that ``map(dataset.note_skips, loader)`` notes each batch as it is read."""
        records = batch.get("bad_videos", ())
        for record in [records] if isinstance(records, str) else records:
            for path, reason in json.loads(record):
                self._skip(Path(path), reason)
        return batch

    def _skip(self, path: Path, reason: str) -> None:
        """Count ``path`` as bad, with one warning the first time this dataset sees it."""
        if path not in self.bad_files:
            self.bad_files.add(path)
            log.warning("skipping unreadable video %s; `rho data check` lists all such files", reason)

    def _load(
        self, entry: VideoEntry, rng: np.random.Generator, read: BytesRead | None = None
    ) -> tuple[dict, np.ndarray, int]:
        """Decode one video once and build its V transformed clips (``clips``), or, for a
        ``DeferredAugment`` transform, their uint8 frames and drawn parameters (``frames``, ``draws``)."""

        def pick_starts(num_frames: int, span: int, fps: float) -> np.ndarray:
            t_max_frames = None if self.t_max is None else math.floor(self.t_max * fps + 1e-6)
            if self.t_max_mode == "gap":
                t_min_frames = None if self.t_min is None else math.ceil(self.t_min * fps - 1e-6)
                return gap_clip_starts(num_frames, self.clips, span, t_min_frames, t_max_frames, rng)
            return clip_starts(num_frames, self.clips, span, t_max_frames, rng)

        frames, seconds, padded = decode_clips(
            entry,
            self.frames,
            self.stride,
            self.fps,
            pick_starts,
            self.seek_threshold,
            self.cache,
            self.autorotate,
            self.decoder,
            self.decode_short_side,
            read,
        )
        frames_per_clip = torch.as_tensor(frames)  # NumPy, or CUDA tensors from NVDEC
        if self.views > self.clips:  # ρ = 1 with two views: two augmentations of the one clip
            frames_per_clip = frames_per_clip.expand(self.views, *frames_per_clip.shape[1:])
            seconds = np.repeat(seconds, self.views)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(
                int(rng.integers(2**63 - 1))
            )  # CPU only: no lazy CUDA seeding
            if isinstance(self.transform, DeferredAugment):  # data.augment.placement: device
                views = {
                    FRAMES: frames_per_clip,
                    DRAWS: torch.stack([self.transform.draw(c) for c in frames_per_clip]),
                }
            else:
                views = {"clips": torch.stack([self._transform(clip) for clip in frames_per_clip])}
        if (
            self.clip_order != "time" and self.clips > 1
        ):  # decoded and augmented in time order, then reordered
            order = clip_order(self.clips, self.clip_order, rng)
            views = {key: value[torch.from_numpy(order)] for key, value in views.items()}
            seconds = seconds[order]
        return views, seconds, padded

    def _transform(self, clip: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return clip.permute(3, 0, 1, 2).float().div_(255)
        return self.transform(clip)
