"""Constructor argument checks with messages that name the argument, the value and the choices."""

from __future__ import annotations

from collections.abc import Sequence


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise ValueError naming all three."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(repr, choices))}")
    return value


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is > 0; else raise ValueError."""
    if not value > 0:
        raise ValueError(f"{name}={value!r}: must be > 0")
    return value
