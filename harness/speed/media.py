"""Inputs and measuring tools the speed benchmarks share: cached test videos, datasets, timers, memory.

``textured_videos`` writes H.264 files with real texture and motion (a drifting random
texture, a moving block, a little noise), so that decoding costs what natural footage
costs rather than what a flat test pattern does. Everything is cached under the benchmark's
work folder and keyed by its parameters.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from harness.data.encode import write_video
from harness.data.manifest import ManifestError, VideoEntry, read_manifest, write_manifest
from harness.data.synth import SynthSpec, synthesize


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour texture: coarse noise upsampled bilinearly, plus fine detail."""
    coarse = rng.random((height // 16 + 2, width // 16 + 2, 3))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = (
        coarse[y0][:, x0] * (1 - wy) * (1 - wx)
        + coarse[y0 + 1][:, x0] * wy * (1 - wx)
        + coarse[y0][:, x0 + 1] * (1 - wy) * wx
        + coarse[y0 + 1][:, x0 + 1] * wy * wx
    )
    return np.clip(smooth * 200 + rng.random((height, width, 3)) * 55, 0, 255)


def video_frames(index: int, frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """RGB frames [H, W, 3] of test video ``index``: the texture drifts, a block moves across."""
    rng = np.random.default_rng([7, index])
    pad = 64
    texture = _texture(rng, height + 2 * pad, width + 2 * pad)
    drift = rng.uniform(-1.5, 1.5, size=2)
    block = max(8, min(width, height) // 5)
    for t in range(frames):
        dy, dx = (pad + np.round(drift * t)).astype(int) % (2 * pad)
        frame = texture[dy : dy + height, dx : dx + width].copy()
        by = int((height - block) * (0.5 + 0.45 * np.sin(t / 17 + index)))
        bx = int((width - block) * ((t * 3 + 29 * index) % 97) / 97)
        frame[by : by + block, bx : bx + block] = (255, 60 + index % 100, 40)
        frame += rng.normal(0, 3, size=frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def textured_videos(
    folder: str | Path, count: int, seconds: float, fps: int, width: int, height: int
) -> list[VideoEntry]:
    """``count`` H.264 videos (x264 defaults: GOP 250, B-frames) in ``folder``; made once, then reused."""
    folder = Path(folder).resolve() / f"{count}x{seconds:g}s_{fps}fps_{width}x{height}"
    manifest = folder / "videos.csv"
    stamp = folder / "done.json"
    spec = {"count": count, "seconds": seconds, "fps": fps, "width": width, "height": height, "version": 1}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec and _all_present(manifest)):
        frames = max(1, round(seconds * fps))
        rows = []
        for index in range(count):
            path = folder / f"video_{index:03d}.mp4"
            write_video(path, video_frames(index, frames, width, height), fps=fps, crf=23)
            rows.append({"path": str(path), "label": index % 2})
        write_manifest(manifest, rows)
        stamp.write_text(json.dumps(spec))
    return read_manifest(manifest)


def _all_present(manifest: Path) -> bool:
    """True when ``manifest`` reads and every video it names exists."""
    try:
        read_manifest(manifest)
    except ManifestError:
        return False
    return True


QUICK_SYNTH = SynthSpec(train_videos=16, val_videos=8, classes=2, duration=1.0, fps=8, size=32)

# Config overrides of a quick benchmark run on the ``QUICK_SYNTH`` videos: small batches of
# short, small clips through a narrow r3d_tiny.
QUICK_OVERRIDES: dict[str, object] = {
    "data.batch_size": 4,
    "data.frames": 2,
    "data.crop": 16,
    "backbone.width": 4,
    "optim.base_batch_size": 4,
}


def demo_data_root(folder: str | Path, quick: bool) -> Path:
    """A folder holding ``synth/{train,val}.csv``, for ``RHO_DATA``: the demo's own dataset
    (``${RHO_DATA:-data}/synth``) when it exists and ``quick`` is False, else one made under
    ``folder`` (tiny when ``quick``, the demo's default size otherwise)."""
    if not quick:
        existing = Path(os.environ.get("RHO_DATA") or "data")
        if (existing / "synth" / "train.csv").is_file() and (existing / "synth" / "val.csv").is_file():
            return existing.resolve()
    root = Path(folder).resolve() / ("quick" if quick else "full")
    synthesize(root / "synth", QUICK_SYNTH if quick else SynthSpec(), workers=1 if quick else 2)
    return root


@contextmanager
def rho_data(root: Path) -> Iterator[None]:
    """``RHO_DATA=root`` for the block (configs and benchmark files read ``${RHO_DATA:-data}``)."""
    old = os.environ.get("RHO_DATA")
    os.environ["RHO_DATA"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RHO_DATA", None)
        else:
            os.environ["RHO_DATA"] = old


class Stopwatch:
    """Accumulates wall time per label: ``with watch("ours"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started


def _proc_status_bytes(field: str) -> int | None:
    """Field ``field`` (a size in kB, e.g. ``VmRSS``) of /proc/self/status in bytes; None without /proc or the field."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; psutil elsewhere)."""
    resident = _proc_status_bytes("VmRSS")
    if resident is not None:
        return resident
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last ``reset_peak_rss`` (or process start): VmHWM, else ru_maxrss."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
