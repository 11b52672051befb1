"""``rho demo``: the quick start (synthetic data, the demo study, comparison tables)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from harness.demo import DEMO_STUDY, run_demo

    return run_demo(Path(args.spec) if args.spec else DEMO_STUDY)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho demo``."""
    demo = commands.add_parser(
        "demo",
        help="the quick start: synthetic data, the demo study, comparison tables",
        description="Synthesise data/synth (cached), run studies/demo.yaml (methods x rho plus baselines) into "
        "./mlruns and print the comparison tables. Re-running resumes the study.",
    )
    demo.add_argument("--spec", help="another study spec to run the same way (default studies/demo.yaml)")
    demo.set_defaults(func=_demo)
