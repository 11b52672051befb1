"""A throw-away plugin distribution for the entry-point tests (tests/ is on sys.path: tests/conftest.py)."""

import textwrap
from pathlib import Path

import pytest


def install_distribution(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    module: str,
    source: str,
    group: str,
    name: str,
    target: str,
) -> None:
    """A distribution on sys.path: module ``module`` (``source``, dedented) and a dist-info folder whose
    entry point ``name`` of ``group`` names ``target``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{name}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(root))
