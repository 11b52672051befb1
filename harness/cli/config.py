"""``rho config``: print a resolved experiment config, list every config key."""

from __future__ import annotations

import argparse
import sys

from harness.cli.common import UserError


def _config_show(args: argparse.Namespace) -> int:
    """Print the resolved config. Files are checked after it is printed: a missing one is a
    warning (the config is what was asked for; ``rho pretrain`` refuses it), or with
    ``--check-files`` an error, which says how to skip the check."""
    from harness.config import ConfigError, MissingFile, load_experiment

    experiment = load_experiment(args.config, args.overrides, check_files=False)
    print(experiment.to_yaml(), end="")
    if args.no_check_files:
        return 0
    try:
        load_experiment(args.config, args.overrides, check_files=True)
    except MissingFile as exc:
        if args.check_files:
            raise exc.with_hint("--no-check-files skips the check") from None
        sys.stdout.flush()
        print(f"rho: warning: {exc} (rho pretrain refuses it; --no-check-files hides this)", file=sys.stderr)
    except ConfigError as exc:  # a check on this machine (data.decoder): the same, not about files
        if args.check_files:
            raise
        sys.stdout.flush()
        print(f"rho: warning: {exc} (rho pretrain refuses it)", file=sys.stderr)
    return 0


def _add_show_parser(config: argparse._SubParsersAction) -> None:
    show = config.add_parser(
        "show",
        help="print the resolved config (or the error)",
        description="Load CONFIG, apply key=value overrides, validate, and print the resolved YAML. "
        "Manifests and benchmark files that do not exist (yet) are a warning after the config; "
        "--check-files makes them an error, as rho pretrain does.",
    )
    show.add_argument("config", help="experiment YAML, e.g. studies/experiments/demo.yaml")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.clips=3")
    checks = show.add_mutually_exclusive_group()
    checks.add_argument(
        "--check-files",
        action="store_true",
        help="exit 2 when a manifest or benchmark file does not exist (default: a warning)",
    )
    checks.add_argument(
        "--no-check-files", action="store_true", help="do not check that manifests and benchmarks exist"
    )
    show.set_defaults(func=_config_show)


def _config_keys(args: argparse.Namespace) -> int:
    from harness.config import config_keys, describe, did_you_mean

    if args.prefix and not config_keys(args.prefix):
        names = {part for row in config_keys() for part in (row.key.rpartition(".")[0], row.key, row.group)}
        hint = did_you_mean(args.prefix, sorted(n for n in names if n))
        raise UserError(f"no config key is {args.prefix} or under it; {hint}`rho config keys` lists them all")
    print(describe(args.prefix).lstrip("\n"))
    return 0


def _add_keys_parser(config: argparse._SubParsersAction) -> None:
    keys = config.add_parser(
        "keys",
        help="list every config key with its type, default and meaning",
        description="List the config keys: each section's, then the parameters of every method and "
        "backbone (set as method.KEY and backbone.KEY next to method.name and backbone.name).",
    )
    keys.add_argument(
        "prefix",
        nargs="?",
        help="only the keys under this: a section (data, data.augment), a key, or a method or backbone "
        "(method.moco, backbone.slow_r50: its parameters)",
    )
    keys.set_defaults(func=_config_keys)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho config`` and its actions."""
    config = commands.add_parser("config", help="show and check experiment configs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add_show_parser(config)
    _add_keys_parser(config)
