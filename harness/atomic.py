"""Atomic file writes: a temp file beside the target, then a rename, so readers never see half a file.

Every file the harness rewrites in place (checkpoints, run.json, feature caches, manifests, the
synthetic dataset's stamp) goes through ``atomic_file``: a kill, a crash or a full disk mid-write
leaves the previous version (or nothing), never a truncated file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    """The temp file this process writes ``path`` through: hidden, beside it, named by the pid."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(
    path: str | Path, mode: str = "w", *, fsync: bool = False, **open_kwargs: Any
) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing; on a clean exit it replaces ``path``.

    Args:
        path: the file to (re)write; its folder is created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        fsync: flush the file to disk before the rename (for files that must survive a power cut).
        open_kwargs: passed to ``open`` (``newline``, ``encoding``).

    If the body raises, ``path`` is left as it was and the temp file is removed. After a write,
    the temp files of ``path`` left by killed writers of this host are removed too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        remove_stale_temp_files(path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder has no temp file to remove


def remove_stale_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` left by writers on this host that were killed mid-write."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name.removeprefix(f".{path.name}.").removesuffix(".tmp")
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except OSError:
            pass  # alive, or not ours to judge
