"""Per-epoch callbacks under torchrun: called on rank 0, and an exception they raise stops every rank."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from harness import distributed as dist_utils
from harness.runtime import Runtime


def on_main_then_all(callback: Callable[..., None], runtime: Runtime, *args: Any) -> None:
    """Call ``callback`` on rank 0; an exception it raises (``optuna.TrialPruned``, say) is raised on
    every rank, so that all ranks stop together instead of waiting for rank 0 in the next step."""
    error = None
    if runtime.is_main:
        try:
            callback(*args)
        except Exception as exc:
            error = exc
    shared = dist_utils.broadcast_object(_picklable(error))
    if error is not None:
        raise error
    if shared is not None:
        raise shared


def _picklable(error: Exception | None) -> Exception | None:
    """``error``, or a RuntimeError with its message when it cannot be sent to the other ranks."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{error.__class__.__name__}: {error}")
