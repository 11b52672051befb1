"""Retry a call that failed for a passing reason, with exponential backoff, then fail clearly.

A passing reason is an unreachable MLflow tracking server, a restarting PostgreSQL server or
a locked sqlite file: the call is tried again after 0.5, 1, 2, 4, … (at most 10) seconds
until ``$RHO_RETRY_TIMEOUT`` seconds (default 120) have passed, then the caller's
``ServiceUnavailableError`` says what stayed unreachable and what to do. Errors that are
not passing (a bad value, a read-only or full store) are raised at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from harness.errors import EnvironmentFailure
from harness.redact import redact
from harness.schema import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 120.0
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 10.0


class ServiceUnavailableError(EnvironmentFailure, RuntimeError):
    """A store the run needs (MLflow tracking, the Optuna storage) cannot take its calls; the message says which and what to do."""


class RetriesExhausted(RuntimeError):
    """Every retry of a call failed for a passing reason; ``__cause__`` is the last error."""

    def __init__(self, what: str, attempts: int, elapsed: float):
        self.what, self.attempts, self.elapsed = what, attempts, elapsed
        super().__init__(f"{what} failed {attempts} times over {elapsed:.0f} s")


def retry_timeout() -> float:
    """Seconds to keep retrying: ``$RHO_RETRY_TIMEOUT`` (0 disables retries), default 120."""
    raw = os.environ.get("RHO_RETRY_TIMEOUT", "")
    if not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError("RHO_RETRY_TIMEOUT", raw, "a number of seconds >= 0 (how long to retry a store)")
    return value


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or while handling (not past ``raise ... from None``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__


def call_with_retries(
    call: Callable[[], T],
    what: str,
    transient: Callable[[BaseException], bool],
    timeout: float | None = None,
) -> T:
    """``call()``, retried with backoff while it fails with an error ``transient`` accepts.

    Raises:
        RetriesExhausted: the time budget ran out (from the last error).
        Exception: a non-transient error, at once.
    """
    budget = retry_timeout() if timeout is None else timeout
    started = time.monotonic()
    wait, attempts = FIRST_WAIT_S, 0
    while True:
        attempts += 1
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            elapsed = time.monotonic() - started
            if elapsed + wait > budget:
                raise RetriesExhausted(what, attempts, elapsed) from exc
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            log.warning(
                "%s failed (%s: %s); retry %d in %.1f s",
                what,
                exc.__class__.__name__,
                redact(first_line),
                attempts,
                wait,
            )
            time.sleep(wait)
            wait = min(2 * wait, MAX_WAIT_S)
