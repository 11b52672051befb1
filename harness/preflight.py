"""Checks before any compute: can the run write where it must (checkpoints, sqlite stores)?

A read-only ``mlruns/``, a folder without write permission or a full disk is found here, in
one line naming the path and the fix, rather than after the first epoch. The probe writes
and removes one small file, so it catches what permission bits miss (a read-only mount, a
disk with no space left) and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from harness.errors import EnvironmentFailure

PROBE_BYTES = 4096


class NotWritableError(EnvironmentFailure, RuntimeError):
    """A folder or store the run must write cannot be written; the message says which and why."""


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and write, sync and remove a probe file in it.

    Raises:
        NotWritableError: naming ``what``, the folder and the reason (read-only, no space, no permission).
    """
    folder = Path(folder)
    probe = folder / f".rho-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise NotWritableError(f"{what} {folder} is not writable ({_reason(exc)}); {_fix(exc)}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return folder


def check_store(url: str, what: str) -> None:
    """For a ``sqlite:///`` URL: its folder takes new files (the journal) and the file, if any, opens for writing.

    Server stores (PostgreSQL, an MLflow tracking server) are not checked here: their calls
    are retried and fail with their own clear error (``harness.retry``).
    """
    if not url.startswith("sqlite:///"):
        return
    database = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    check_writable(database.parent, f"{what} folder")
    if database.is_file():
        try:
            with open(database, "r+b"):
                pass
        except OSError as exc:
            raise NotWritableError(
                f"{what} {database} is not writable ({_reason(exc)}); {_fix(exc)}"
            ) from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _fix(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or point the run elsewhere), then run the command again"
    if exc.errno == errno.EROFS:
        return "it is on a read-only filesystem: point the run at a writable folder"
    return "make it writable (chmod/chown) or point the run at a writable folder"
