"""Checkpoints: written atomically, loaded safely, refused when they belong to another config.

A checkpoint is a dict of tensors and plain Python values (so ``torch.load(...,
weights_only=True)`` reads it): format version, the config's training hash and YAML, the
completed epoch and step, the method's state (online and momentum encoders, queues,
prototypes), the optimiser's state, the RNG states (Python, NumPy, torch CPU and CUDA), the
MLflow run id and the per-epoch history. The data loader needs no state of its own: the
order of an epoch and every item's randomness derive from (seed, epoch, index).

A mid-epoch checkpoint (a stop signal, ``runtime.checkpoint_every``/``checkpoint_seconds``) is
format 2: the same, plus ``in_epoch``, the position in the epoch under way (its batches done,
the sums of its step metrics) and the bad files found so far; format 1 readers refuse it rather
than resume it at the wrong step. Format 1 checkpoints (epoch ends) stay readable.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.atomic import atomic_file
from harness.errors import EnvironmentFailure, RhoError

FORMAT = 1  # a checkpoint at an epoch end
MID_EPOCH_FORMAT = 2  # one within an epoch: ``in_epoch`` says where
FORMATS = (FORMAT, MID_EPOCH_FORMAT)
LAST = "last.pt"


class CheckpointError(RhoError, RuntimeError):
    """A checkpoint that cannot be used here; the message says why and what to do."""


class CheckpointWriteError(CheckpointError, EnvironmentFailure):
    """A checkpoint could not be written (full disk, read-only folder); the previous one is intact."""


class _RememberingWriter:
    """A binary file for ``torch.save`` that keeps the first ``OSError`` its writes raised."""

    def __init__(self, raw) -> None:
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.raw.flush()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, rename; in
    format 2 when it holds an ``in_epoch`` position, else format 1.

    Raises:
        CheckpointWriteError: the folder cannot take the file (full disk, read-only, no
            permission); ``path`` still holds the previous checkpoint, if there was one.
    """
    path = Path(path)
    try:
        with atomic_file(path, "wb", fsync=True) as raw:
            handle = _RememberingWriter(raw)
            try:
                fmt = MID_EPOCH_FORMAT if state.get("in_epoch") else FORMAT
                torch.save({**state, "format": fmt}, handle)
            except RuntimeError:
                # torch reports a failed write as "unexpected pos ..."; raise the OSError behind it
                # (No space left on device, ...) so that the message says what happened.
                if handle.error is not None:
                    raise handle.error from None
                raise
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint was kept"
        raise CheckpointWriteError(
            f"could not write checkpoint {path} ({reason}); {kept}. Free disk space or make the folder "
            "writable (or set runtime.output_dir), then resume (--resume, or re-run the study)"
        ) from exc
    return path


def read_tensor_file(path: str | Path, kind: str = "checkpoint", hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: no code in the file runs.

    Raises:
        CheckpointError: no file at ``path`` ("no <kind> at ..."), or one that does not load
            safely (its first error line, then ``hint``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {kind} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{path} is not a readable {kind} ({exc.__class__.__name__}: {first}){hint}"
        ) from None


def load_checkpoint(path: str | Path, expected_hash: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing or unreadable file, another format, or (with
            ``expected_hash``) a checkpoint written by a different training config.
    """
    path = Path(path)
    state = read_tensor_file(path)
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        raise CheckpointError(
            f"{path} is not a rho-harness checkpoint of format {' or '.join(map(str, FORMATS))}"
        )
    if expected_hash is not None and state.get("config_hash") != expected_hash:
        raise CheckpointError(
            f"{path} was written by another training config (hash {state.get('config_hash')}, this config "
            f"{expected_hash}); start a fresh run (another runtime.output_dir or run name) or resume with the "
            "config it was made with"
        )
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop may draw from, in weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state = {
        "python": [version, list(internal), python_gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(internal), python_gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
