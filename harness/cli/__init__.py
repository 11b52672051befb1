"""The ``rho`` command line (also ``python -m harness``).

Every subcommand has its own ``--help``. User errors (a bad config key, a missing file, a
bad manifest row) print one line naming the problem and the fix, and exit with status 2.
Each command's module here holds its parser next to its handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from harness import __version__
from harness.cli import (
    bench,
    completion,
    config,
    dashboard,
    data,
    demo,
    evaluate,
    import_checkpoint,
    init,
    pretrain,
    report,
    study,
    ui,
)
from harness.cli.common import warn_passwords_in_argv
from harness.errors import RhoError

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  rho demo                                        the quick start (what `make demo` runs)
  rho init my-study                               copy the shipped studies/ and benchmarks/ to edit
  rho data synth data/synth                       make the demo dataset (real H.264 mp4 files)
  rho data check data/synth/train.csv             list unreadable videos
  rho config show studies/experiments/demo.yaml data.clips=3
  rho pretrain studies/experiments/demo.yaml method.name=moco
  rho evaluate mlruns/checkpoints/RUN/last.pt --benchmark benchmarks/synth_linear.yaml
  rho import-checkpoint MoCo_SlowR50_8x8_T2_epoch_00200.pyth zoo/moco_r2.pt   a SlowFast model
  rho study run studies/cpu/clips.yaml --workers 2
  rho study status clips
  rho ui                                          the MLflow UI on 127.0.0.1
  rho bench decode --quick                        a speed benchmark (all: rho bench; see --list)
  rho report clips                                tables, plots and report.html in reports/clips/
  rho leaderboard --benchmark synth-linear        the best run per method, backbone and rho
  rho dashboard clips                             optuna-dashboard of a study on 127.0.0.1
  eval "$(rho completion bash)"                   tab completion in this shell (zsh: rho completion zsh)
"""


COMMANDS = (
    init, config, data, pretrain, study, evaluate, import_checkpoint, demo, ui, report, dashboard, bench,
    completion,
)  # fmt: skip
"""The command modules, each with ``add_parser(commands)``, in the order ``rho --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``rho`` parser: the top-level options, and each command module's commands."""
    parser = argparse.ArgumentParser(
        prog="rho",
        description="rho-harness: studies of self-supervised video representation learning with ρ clips per video.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"rho-harness {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def _redacted(exc: BaseException) -> str:
    """The error's message with URL passwords hidden."""
    from harness.redact import redact

    return redact(str(exc))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rho``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    warn_passwords_in_argv(args)
    try:
        return args.func(args)
    except RhoError as exc:  # 2: the request is wrong; 1: the machine is (a store down, a full disk)
        print(f"rho: error: {_redacted(exc)}", file=sys.stderr)
        return exc.exit_status
    except FileNotFoundError as exc:
        print(f"rho: error: {_redacted(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rho: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rho config keys | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
