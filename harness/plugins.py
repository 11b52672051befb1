"""Registries of built-in names plus entry points: the one lookup that backbones and methods share.

A registry is a mapping of built-in names and an entry-point group (``rho.backbones``,
``rho.methods``) that installed distributions add names to; a built-in name wins over an entry
point of the same name. Entry points are read again whenever an install may have changed them
(a folder of ``sys.path`` changed: installing or removing a distribution adds or removes its
metadata folder there), and otherwise served from memory: a 1,000-point study looks them up
twice per point. Imports nothing heavy, so ``methods`` may use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

_CACHE: dict[str, tuple[tuple, dict[str, EntryPoint]]] = {}


def _installs() -> tuple:
    """What the installed distributions depend on: each ``sys.path`` folder and its change time."""
    stamps = []
    for folder in sys.path:
        try:
            stamps.append((folder, os.stat(folder or ".").st_mtime_ns))
        except OSError:
            stamps.append((folder, None))
    return tuple(stamps)


def plugins(group: str) -> dict[str, EntryPoint]:
    """Entry points of ``group`` by name, read again when ``sys.path`` or one of its folders changed."""
    stamp = _installs()
    cached = _CACHE.get(group)
    if cached is None or cached[0] != stamp:
        cached = _CACHE[group] = (stamp, {entry.name: entry for entry in entry_points(group=group)})
    return dict(cached[1])


def available(builtin: Mapping[str, Any], group: str) -> list[str]:
    """Names of the registry, built-in and from entry points of ``group``, sorted."""
    return sorted({*builtin, *plugins(group)})


def lookup(
    builtin: Mapping[str, Any],
    group: str,
    name: str,
    *,
    kind: str,
    accept: Callable[[Any], bool],
    must_be: str,
) -> Any:
    """The built-in entry ``name``, else the object its entry point in ``group`` loads.

    ``kind`` names what is looked up (in the unknown-name message); ``accept`` checks a loaded
    object and ``must_be`` says what it has to be when it fails.

    Raises:
        ValueError: for an unknown name (listing the choices), or an entry point whose object
            ``accept`` refuses.
    """
    if name in builtin:
        return builtin[name]
    found = plugins(group)
    if name not in found:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(available(builtin, group))}")
    loaded = found[name].load()
    if not accept(loaded):
        raise ValueError(f"entry point {name!r} ({found[name].value}) is not {must_be}")
    return loaded
