"""``rho config``: print a resolved experiment config, list every config key."""

from __future__ import annotations

import argparse


def _config_show(args: argparse.Namespace) -> int:
    from harness.config import load_experiment

    experiment = load_experiment(args.config, args.overrides, check_files=not args.no_check_files)
    print(experiment.to_yaml(), end="")
    return 0


def _add_show_parser(config: argparse._SubParsersAction) -> None:
    show = config.add_parser(
        "show",
        help="print the resolved config (or the error)",
        description="Load CONFIG, apply key=value overrides, validate, and print the resolved YAML.",
    )
    show.add_argument("config", help="experiment YAML, e.g. studies/experiments/demo.yaml")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.clips=3")
    show.add_argument(
        "--no-check-files", action="store_true", help="do not require manifests and benchmarks to exist"
    )
    show.set_defaults(func=_config_show)


def _config_keys(args: argparse.Namespace) -> int:
    from harness.config import describe

    print(describe())
    return 0


def _add_keys_parser(config: argparse._SubParsersAction) -> None:
    keys = config.add_parser("keys", help="list every config key with its default and meaning")
    keys.set_defaults(func=_config_keys)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho config`` and its actions."""
    config = commands.add_parser("config", help="show and check experiment configs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add_show_parser(config)
    _add_keys_parser(config)
