"""``rho dashboard``: optuna-dashboard on a study, served on this machine."""

from __future__ import annotations

import argparse

from harness.cli.common import STORAGE_HELP, UserError, add_server_arguments


def _dashboard(args: argparse.Namespace) -> int:
    import signal

    from harness.dashboard import dashboard_server
    from harness.redact import redact
    from harness.study import resolve_storage

    storage_url = resolve_storage(args.storage)
    try:
        server, url = dashboard_server(storage_url, args.study, args.host, args.port)
    except KeyError:
        raise UserError(
            f"no study named {args.study!r} in {redact(storage_url)}; `rho study list` shows the studies "
            "(or pass --storage)"
        ) from None
    print(
        f"Optuna dashboard of study {args.study} ({redact(storage_url)}) at {url} (Ctrl-C stops it)",
        flush=True,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill stops it as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Optuna dashboard stopped", flush=True)
    finally:
        server.server_close()
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho dashboard``."""
    dashboard = commands.add_parser(
        "dashboard",
        help="open optuna-dashboard on a study (history, importances, pruned trials)",
        description="Serve optuna-dashboard for STUDY's Optuna storage on 127.0.0.1 and print the study's URL; "
        "Ctrl-C stops it.",
    )
    dashboard.add_argument("study")
    dashboard.add_argument("--storage", help=STORAGE_HELP)
    add_server_arguments(dashboard)
    dashboard.set_defaults(func=_dashboard)
