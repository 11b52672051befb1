"""The study specs, experiments and benchmarks the project ships, wherever it is installed.

In a source checkout they are the repository's ``studies/`` and ``benchmarks/`` folders. An
installed wheel carries copies of them as package data (``harness/_shipped``; ``setup.py``
copies them in at build time), so that ``rho demo``, ``rho bench`` and ``rho study run
studies/cpu/clips.yaml`` work from any folder. A relative path a user gives is looked up in the
current folder first; only when it is not there does the shipped copy serve
(``locate``). ``rho init DIR`` copies the shipped files into DIR to edit them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED_FOLDERS = ("studies", "benchmarks")


def shipped_root() -> Path:
    """The folder that holds ``studies/`` and ``benchmarks/``: the wheel's copy, else the checkout."""
    packaged = PACKAGE / "_shipped"
    return packaged if packaged.is_dir() else PACKAGE.parent


def in_checkout() -> bool:
    """Whether this package runs from a source checkout (editable install or PYTHONPATH)."""
    return not (PACKAGE / "_shipped").is_dir() and (PACKAGE.parent / "pyproject.toml").is_file()


def bench_results() -> Path:
    """Where ``rho bench`` records results: a checkout's benchmarks/RESULTS.md; for an installed
    wheel, benchmarks/RESULTS.md under the current folder (package data is no place to write)."""
    return (shipped_root() if in_checkout() else Path(".")) / "benchmarks" / "RESULTS.md"


def shipped(relative: str | Path) -> Path:
    """A shipped file or folder, e.g. ``shipped("studies/demo.yaml")``."""
    return shipped_root() / relative


def locate(path: str | Path) -> Path:
    """``path`` as given when it exists (or is absolute); else the shipped file of that relative path.

    A path that is in neither place is returned as given, so that the caller's error names it.
    """
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    candidate = shipped_root() / path
    if path.parts and path.parts[0] in SHIPPED_FOLDERS and candidate.exists():
        return candidate
    return path


def shipped_files(root: Path) -> list[Path]:
    """The files of ``root``'s studies/ and benchmarks/ that a wheel carries and ``rho init`` copies,
    relative to ``root``: specs, the SLURM script and the speed benchmarks' modules; not results or
    caches. ``setup.py`` builds the wheel's copy with this function."""
    return [
        file.relative_to(root)
        for folder in SHIPPED_FOLDERS
        for file in sorted((root / folder).rglob("*"))
        if file.is_file() and file.suffix in {".yaml", ".sbatch", ".py"} and "__pycache__" not in file.parts
    ]


def copy_shipped(destination: str | Path, overwrite: bool = False) -> list[Path]:
    """Copy the shipped ``studies/`` and ``benchmarks/`` into ``destination`` (``rho init``).

    Files that already exist there are kept unless ``overwrite``; returns the files written.
    """
    destination, root = Path(destination), shipped_root()
    written = []
    for relative in shipped_files(root):
        target = destination / relative
        if target.exists() and not overwrite:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
        written.append(target)
    return written
