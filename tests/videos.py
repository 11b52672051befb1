"""Test videos whose frames carry their own index, so decoded clips can be checked exactly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from harness.data.encode import write_video

BITS = 12  # up to 4096 frames
GRID = 4  # 4 x 4 cells: 12 index bits, 4 constant marker cells


def index_frame(index: int, size: int = 64) -> np.ndarray:
    """A frame whose 4x4 cells spell ``index`` in binary (black 0, white 1)."""
    cell = size // GRID
    bits = [(index >> b) & 1 for b in range(BITS)] + [1, 0, 1, 0]
    frame = np.zeros((size, size, 3), np.uint8)
    for k, bit in enumerate(bits):
        row, col = divmod(k, GRID)
        frame[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = 255 * bit
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frame`` on a decoded (lossy) frame, uint8 [H, W, 3] or float [3, H, W] in [0, 1]."""
    if frame.ndim == 3 and frame.shape[0] == 3:
        frame = np.moveaxis(np.asarray(frame) * 255, 0, -1)
    size = frame.shape[0]
    cell = size // GRID
    value = 0
    for k in range(BITS):
        row, col = divmod(k, GRID)
        patch = frame[row * cell + 2 : (row + 1) * cell - 2, col * cell + 2 : (col + 1) * cell - 2]
        value |= int(patch.mean() > 127) << k
    return value


def write_index_video(
    path: Path, num_frames: int, fps: int = 10, size: int = 64, gop: int | None = None
) -> Path:
    """An mp4 of ``num_frames`` frames, frame i showing i."""
    return write_video(path, (index_frame(i, size) for i in range(num_frames)), fps=fps, gop=gop)


def write_audio_only(path: Path) -> Path:
    """An mp4 with one AAC stream and no video."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1024, Fraction(1, 16000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def brightness_video(path: Path, label: int, rng: np.random.Generator, blocks: int = 8) -> Path:
    """12 frames of ``blocks`` x 8 px: a blocky random texture, drifting, on a bright (label 0)
    or dark (label 1) level; a class any encoder separates, for evaluation tests."""
    level = 190.0 if label == 0 else 60.0
    texture = np.kron(rng.normal(0, 25, (blocks, blocks, 1)), np.ones((8, 8, 3)))
    frames = [np.clip(level + np.roll(texture, 2 * t, axis=1), 0, 255).astype(np.uint8) for t in range(12)]
    return write_video(path, frames, fps=8)


def brightness_manifests(root: Path, blocks: int = 8) -> dict[str, Path]:
    """train.csv (8 ``brightness_video``s) and val.csv (4) under ``root``, labels alternating 0, 1."""
    from harness.data import write_manifest

    rng = np.random.default_rng(0)
    manifests = {}
    for split, count in (("train", 8), ("val", 4)):
        rows = [
            {"path": str(brightness_video(root / f"{split}{i}.mp4", i % 2, rng, blocks)), "label": i % 2}
            for i in range(count)
        ]
        manifests[split] = write_manifest(root / f"{split}.csv", rows)
    return manifests
