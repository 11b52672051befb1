"""``rho data check``: find every file in a manifest that training would have to skip."""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.decode import BadVideo, decode_times, open_video, probe, read_turn
from harness.data.manifest import VideoEntry, read_manifest


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


def iter_check(entries: Iterable[VideoEntry], full: bool = False, threads: int = 4) -> Iterator[CheckResult]:
    """Check every manifest row, yielding each row's verdict in manifest order as it is known.

    PyAV releases the GIL while decoding, so ``threads`` threads overlap. At most ``4 × threads``
    rows are in flight, and the decoded frames of finished rows are collected as the check goes
    (PyAV's frames sit in reference cycles), so memory stays flat however long the manifest: a
    240k-row Kinetics manifest costs what a 1k-row one does.
    """
    window = 4 * max(1, threads)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        for done, entry in enumerate(entries, start=1 - window):
            pending.append(pool.submit(check_video, entry.path, full))
            if done > 0:
                yield pending.popleft().result()
                if done % COLLECT_EVERY == 0:
                    gc.collect()
        while pending:
            yield pending.popleft().result()


COLLECT_EVERY = 64  # rows between collections of PyAV's reference cycles (a few ms each)


def check_manifest(
    manifest: str | Path, full: bool = False, threads: int = 4, allow_outside_root: bool = True
) -> list[CheckResult]:
    """Every row's verdict (``iter_check``), as a list.

    With ``allow_outside_root=False`` (what ``rho data check`` passes without
    ``--allow-outside-root``, as training does without ``data.allow_outside_root``) a row outside
    the manifest's folder raises the ``ManifestError`` training raises: the same ``read_manifest`` rule.
    """
    entries = read_manifest(manifest, check_files=False, allow_outside_root=allow_outside_root)
    return list(iter_check(entries, full, threads))
