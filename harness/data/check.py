"""``rho data check``: find every file in a manifest that training would have to skip."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.decode import BadVideo, decode_times, open_video, probe, read_turn
from harness.data.manifest import read_manifest


@dataclass(frozen=True)
class CheckResult:
    """One manifest row's verdict."""

    path: Path
    ok: bool
    reason: str = ""
    fps: float = 0.0
    frames: int = 0
    turn: str = "none"  # how its display matrix turns the frames (``decode.display_turn``)


def check_video(path: Path, full: bool = False) -> CheckResult:
    """Open, probe and decode a video: its first frame and its last second (or all, ``full``).

    A file whose stream ends more than a second before its header says is reported as truncated.
    """
    if not path.is_file():
        return CheckResult(path, False, "file does not exist")
    if path.stat().st_size == 0:
        return CheckResult(path, False, "zero-length file")
    try:
        container = open_video(path)
        try:
            info = probe(container, path)
            end = max(0.0, info.duration - 1.0)  # header frame counts may be estimates: allow a second
            # every frame up to ``end`` and never none: a video under a second still has its first
            times = np.arange(0.0, end + 0.5 / info.fps, 1.0 / info.fps) if full else np.array([0.0, end])
            _, padded = decode_times(container, times, seek_threshold=1.0, path=path)
            turn = read_turn(container)
        finally:
            container.close()
    except BadVideo as exc:
        return CheckResult(path, False, str(exc).removeprefix(f"{path}: "))
    if padded:
        return CheckResult(
            path, False, f"truncated: the header promises {info.num_frames} frames, the stream ends early"
        )
    return CheckResult(path, True, fps=info.fps, frames=info.num_frames, turn=turn)


def check_manifest(
    manifest: str | Path, full: bool = False, threads: int = 4, allow_outside_root: bool = True
) -> list[CheckResult]:
    """Check every row of a manifest (PyAV releases the GIL while decoding, so threads overlap).

    With ``allow_outside_root=False`` (what ``rho data check`` passes without
    ``--allow-outside-root``, as training does without ``data.allow_outside_root``) a row outside
    the manifest's folder raises the ``ManifestError`` training raises: the same ``read_manifest`` rule.
    """
    entries = read_manifest(manifest, check_files=False, allow_outside_root=allow_outside_root)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(lambda e: check_video(e.path, full), entries))
