"""The torchcodec backend (``data.decoder: torchcodec``): the PyAV backend's frames, decoded by torchcodec.

PyAV still opens and probes the file (so a bad file raises the same ``BadVideo``) and demuxes
its packets, without decoding, for every frame's presentation time; those times go to
torchcodec as its frame index (``custom_frame_mappings``: exact seeking, no second scan of
the file), and the frames shown at the requested times are picked from them by the rules
``decode_times`` follows (``shown_by``), so both backends return the same frames: bit-identical
on constant-rate H.264 (tested), where both convert to RGB with FFmpeg's swscale.

The frame index costs a demux of every packet of the file, so each process (each DataLoader
worker) keeps the indexes it built, keyed by the file's path, size, modification time and inode,
up to ``INDEX_CACHE_BYTES``, least recently used first out: a video opened again (the next epoch,
or the next ρ-clip item of a small dataset) skips PyAV entirely. A file rewritten in place gets a
new key.

torchcodec applies the display matrix's rotation but not its flips; a stream with a display
matrix (phone videos, rare) has its turn read the PyAV way (``read_turn``) and torchcodec's
rotation undone and the full turn applied, so ``autorotate`` means the same here.

``device="cuda"`` decodes with NVDEC (frames come back as CUDA tensors); it cannot be tested
on a machine without a GPU and pays mostly at large frame sizes: at Kinetics sizes (340×256)
CPU decoding in DataLoader workers usually wins. ``data.decode_device`` guards it.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from harness.config import DecoderUnavailable, torchcodec_unavailable
from harness.data.decode import (
    _TURNS,
    ON_GRID,
    BadVideo,
    OpenVideo,
    PyAVVideo,
    VideoInfo,
    open_video,
    probe,
    read_turn,
    scaled_size,
    shown_by,
)


def _snap(positions: np.ndarray) -> np.ndarray:
    """Positions within ``ON_GRID`` of the grid put on it (``frame_position``'s rule)."""
    nearest = np.round(positions)
    return np.where(np.abs(positions - nearest) <= ON_GRID, nearest, positions)


def _quarter_turns(degrees: float | None) -> int:
    """torchcodec's rotation as counter-clockwise quarter turns of the stored frame (its ``rotation_from_degrees``)."""
    if degrees is None:
        return 0
    return {0: 0, 90: 1, 180: 2, -180: 2, -90: 3}[int(round(degrees / 90)) * 90]


@dataclass
class _FrameIndex:
    """Every frame of the stream, in presentation order: pts (time-base units), durations, keyframes."""

    pts: np.ndarray
    durations: np.ndarray
    keyframes: np.ndarray

    def mappings(self) -> str:
        """torchcodec's ``custom_frame_mappings`` JSON (ffprobe's ``-show_frames`` keys)."""
        frames = [
            {"pts": int(p), "duration": int(d), "key_frame": int(k)}
            for p, d, k in zip(self.pts, self.durations, self.keyframes, strict=True)
        ]
        return json.dumps({"frames": frames})


def _frame_index(container: av.container.InputContainer, path: str | Path) -> _FrameIndex | None:
    """The packets' timestamps, demuxed without decoding; None where a packet has no pts
    (then this file is decoded the PyAV way). The container is rewound to the start."""
    stream = container.streams.video[0]
    pts, durations, keyframes = [], [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None:
                continue  # the demuxer's end-of-stream packet
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            durations.append(packet.duration or 0)
            keyframes.append(packet.is_keyframe)
        container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError, ValueError):
        raise BadVideo(f"{path}: truncated (the demuxer failed part-way through the file)") from None
    if not pts:
        raise BadVideo(f"{path}: truncated (no frame could be decoded)")
    order = np.argsort(pts, kind="stable")
    stamps = np.asarray(pts, dtype=np.int64)[order]
    keep = np.concatenate([[True], np.diff(stamps) > 0])  # a repeated pts shows one frame (as decode_times)
    return _FrameIndex(
        stamps[keep],
        np.asarray(durations, dtype=np.int64)[order][keep],
        np.asarray(keyframes, dtype=bool)[order][keep],
    )


@dataclass
class _Indexed:
    """What opening a video with PyAV told: its info, frame starts and end (in frames of its
    average rate), torchcodec's frame mappings, and its display turn once read."""

    info: VideoInfo
    starts: np.ndarray
    end: float
    mappings: str
    turn: str | None = None  # read (PyAV decodes the first frame) only for a stream torchcodec rotates

    @classmethod
    def build(cls, container: av.container.InputContainer, info: VideoInfo, index: _FrameIndex) -> _Indexed:
        stream = container.streams.video[0]
        time_base, origin = stream.time_base or Fraction(1, 1), stream.start_time or 0
        starts = _snap((index.pts - origin).astype(np.float64) * float(time_base) * info.fps)
        last = float(index.durations[-1] * time_base) * info.fps if index.durations[-1] else 1.0
        end = starts[-1] + (float(round(last)) if abs(last - round(last)) <= ON_GRID else last)
        return cls(info, starts, end, index.mappings())

    def nbytes(self) -> int:
        return self.starts.nbytes + len(self.mappings) + 256


# Frame indexes kept per process (``_INDEXES``): at ~45 bytes a frame, 64 MiB holds ~5,000
# ten-second 30 fps videos, a worker's share of an epoch for most datasets that fit on one node.
INDEX_CACHE_BYTES = 64 << 20
_INDEXES: OrderedDict[tuple, _Indexed] = OrderedDict()
_INDEX_BYTES = [0]


def _file_key(path: str | Path) -> tuple | None:
    """The cache key of a file: path, size, modification time and inode (None when it can't be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _remember(key: tuple, indexed: _Indexed) -> None:
    """Keep ``indexed`` under ``key``, dropping the least recently used past ``INDEX_CACHE_BYTES``."""
    size = indexed.nbytes()
    if size > INDEX_CACHE_BYTES:
        return
    _INDEXES[key] = indexed
    _INDEX_BYTES[0] += size
    while _INDEX_BYTES[0] > INDEX_CACHE_BYTES:
        _, dropped = _INDEXES.popitem(last=False)
        _INDEX_BYTES[0] -= dropped.nbytes()


def _recall(key: tuple | None) -> _Indexed | None:
    """The index kept under ``key`` (now the most recently used), or None."""
    if key is None or key not in _INDEXES:
        return None
    _INDEXES.move_to_end(key)
    return _INDEXES[key]


class _TorchcodecVideo:
    """One video: torchcodec's decoder on the PyAV-demuxed frame index."""

    def __init__(
        self, indexed: _Indexed, path: str | Path, device: str, autorotate: bool, short_side: int | None
    ):
        info = indexed.info
        self.info, self.path, self.device = info, path, device
        self.starts, self.end = indexed.starts, indexed.end
        mappings = indexed.mappings
        width, height = scaled_size(info.width, info.height, short_side)  # stored orientation
        try:
            self.decoder = self._decoder(mappings, (width, height), (info.width, info.height))
            rotation = self.decoder.metadata.rotation
            self.undo = _quarter_turns(rotation)  # what torchcodec turned: undone, then our turn applied
            if self.undo % 2 and (width, height) != (info.width, info.height):  # sizes are post-rotation
                self.decoder = self._decoder(mappings, (height, width), (info.height, info.width))
        except (RuntimeError, ValueError) as exc:
            raise BadVideo(f"{path}: truncated (torchcodec could not open it: {_first_line(exc)})") from None
        # a display matrix (phone videos, rare): its full turn, flips too, read the PyAV way
        self.turn = "none"
        if rotation is not None and autorotate:
            if indexed.turn is None:
                with open_video(path) as container:
                    indexed.turn = read_turn(container)
            self.turn = indexed.turn

    def _decoder(self, mappings: str, size: tuple[int, int], full: tuple[int, int]):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        return VideoDecoder(
            str(self.path),
            dimension_order="NHWC",
            device=self.device,
            transforms=[Resize((size[1], size[0]))] if size != full else None,
            custom_frame_mappings=mappings,
        )

    def at(self, times: np.ndarray) -> tuple[np.ndarray, int]:
        slots = np.asarray(times, dtype=np.float64) * self.info.fps
        shown = np.array([np.count_nonzero(shown_by(self.starts, slot)) for slot in slots], dtype=np.int64)
        past_end = int(sum(bool(shown_by(self.end, slot)) for slot in slots))
        wanted = np.clip(shown - 1, 0, len(self.starts) - 1)
        unique, order = np.unique(wanted, return_inverse=True)
        try:
            batch = self.decoder.get_frames_at(unique.tolist()).data
        except (RuntimeError, IndexError, ValueError) as exc:
            raise BadVideo(
                f"{self.path}: truncated (the decoder failed part-way through the file: {_first_line(exc)})"
            ) from None
        if self.device != "cpu":
            return batch[order], past_end  # CUDA tensors (NVDEC); only unturned streams get here
        frames = batch.numpy()
        if self.undo or self.turn != "none":
            frames = np.stack([_TURNS[self.turn](np.rot90(f, -self.undo)) for f in frames])
        return frames[order], past_end

    def close(self) -> None:
        self.decoder = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


class TorchcodecDecoder:
    """``data.decoder: torchcodec``: exact seeking (``custom_frame_mappings``), the PyAV backend's frames.

    Args:
        device: "cpu", or "cuda" for NVDEC (frames as CUDA tensors; streams with a display
            matrix are refused there, as the turn is applied on the CPU).

    Raises:
        DecoderUnavailable: torchcodec, or the FFmpeg libraries it loads, are missing; the
            message names the pip extra or the apt packages.
    """

    name = "torchcodec"

    def __init__(self, device: str = "cpu"):
        problem = torchcodec_unavailable()
        if problem:
            raise DecoderUnavailable(f"data.decoder torchcodec: {problem}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"torchcodec decodes on cpu or cuda, got {device!r}")
        self.device = device

    def open(
        self,
        path: str | Path,
        *,
        seek_threshold: float | None = None,
        autorotate: bool = True,
        short_side: int | None = None,
    ) -> OpenVideo:
        key = _file_key(path)
        indexed = _recall(key)
        if indexed is None:
            container = open_video(path)
            try:
                info = probe(container, path)
                index = _frame_index(container, path)
                if index is None:  # no timestamps to index by: PyAV decodes this file (the same frames)
                    return PyAVVideo(container, info, path, seek_threshold, autorotate, short_side)
                indexed = _Indexed.build(container, info, index)
            except BaseException:
                container.close()
                raise
            container.close()
            if key is not None:
                _remember(key, indexed)
        video = _TorchcodecVideo(indexed, path, self.device, autorotate, short_side)
        if self.device != "cpu" and (video.undo or video.turn != "none"):
            raise BadVideo(
                f"{path}: not a video NVDEC decodes here (a display matrix: use decode_device cpu)"
            )
        return video


__all__ = ["TorchcodecDecoder"]
