"""``rho init``: copy the shipped study specs and benchmarks into a folder, to edit and run them."""

from __future__ import annotations

import argparse
from pathlib import Path


def _init(args: argparse.Namespace) -> int:
    from harness.resources import copy_shipped, shipped_files, shipped_root

    destination = Path(args.folder)
    written = copy_shipped(destination, overwrite=args.force)
    print(f"copied {len(written)} files from {shipped_root()} into {destination}/ (studies/, benchmarks/)")
    kept = len(shipped_files(shipped_root())) - len(written)
    if kept:
        print(f"{kept} files already there were kept (--force overwrites them)")
    print(f"next: cd {destination} && rho demo   (or: rho study run studies/cpu/clips.yaml)")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho init``."""
    init = commands.add_parser(
        "init",
        help="copy the shipped study specs and benchmarks into a folder (to edit them)",
        description="Copy studies/ (study specs, experiments, the SLURM script) and benchmarks/ (evaluation "
        "benchmarks, speed benchmarks) as shipped with this installation into FOLDER. Without it, a "
        "relative path such as studies/cpu/clips.yaml that is not in the current folder names the "
        "shipped file.",
    )
    init.add_argument("folder", nargs="?", default=".", help="where to copy them (default: this folder)")
    init.add_argument("--force", action="store_true", help="overwrite files that are already there")
    init.set_defaults(func=_init)
