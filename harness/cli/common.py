"""What the ``rho`` commands share: the user-error type, option help texts, server options,
metric printing and the warning about passwords on the command line."""

from __future__ import annotations

import argparse
import sys

from harness.errors import RhoError

TRACKING_URI_HELP = (
    "MLflow store: http(s)://HOST:PORT, sqlite:///FILE or postgresql://USER@HOST/DB "
    "(default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
)
STORAGE_HELP = (
    "Optuna storage URL: sqlite:///FILE or postgresql://USER@HOST/DB "
    "(default: $RHO_STORAGE or sqlite:///mlruns/optuna.db)"
)


class UserError(RhoError):
    """An error in what the user asked for; printed without a traceback, exit status 2."""


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--host and --port of a local web server (``rho ui``, ``rho dashboard``)."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")


def print_metrics(metrics: dict[str, float]) -> None:
    """The metrics, one a line, by name (``rho pretrain``, ``rho evaluate``)."""
    for key, value in sorted(metrics.items()):
        print(f"  {key:40} {value:10.4g}")


_URL_OPTIONS = {
    "storage": ("--storage", "RHO_STORAGE"),
    "tracking_uri": ("--tracking-uri", "MLFLOW_TRACKING_URI"),
}


def warn_passwords_in_argv(args: argparse.Namespace) -> None:
    """A URL with a password on the command line is visible to every user of the machine (``ps``)."""
    from harness.redact import redact

    for attribute, (option, variable) in _URL_OPTIONS.items():
        value = getattr(args, attribute, None)
        if isinstance(value, str) and redact(value) != value:
            print(
                f"rho: warning: the password in {option} is visible to every user of this machine "
                f"(ps) while rho runs; set ${variable} instead and leave {option} out",
                file=sys.stderr,
            )
