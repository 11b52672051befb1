"""``rho ui``: the MLflow UI on the project's store, as a process group that Ctrl-C stops whole."""

from __future__ import annotations

import argparse
import os
import sys
import time

from harness.cli.common import TRACKING_URI_HELP, add_server_arguments


def _ui(args: argparse.Namespace) -> int:
    import signal
    import socket
    import subprocess
    import tempfile

    from harness.redact import redact
    from harness.tracking import mlflow_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    port = args.port
    if not port:
        with socket.socket() as sock:
            sock.bind((args.host, 0))
            port = sock.getsockname()[1]
    # The store as MLflow is given it (a postgresql:// URL names the installed driver, psycopg2),
    # in the environment, not on the command line, where `ps` would show its password.
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        args.host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # The server's log goes to a file: a pipe nobody reads would block it once full.
    log_file = tempfile.NamedTemporaryFile("w+", prefix="rho-ui-", suffix=".log", delete=False)
    # MLflow 3's GenAI job runner (huey consumers) is of no use here and slows start and stop.
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_BACKEND_STORE_URI": mlflow_uri(uri),
    }
    # Its own session: stopping it reaches the uvicorn worker too, and nothing is left behind;
    # SIGTERM (kill, a service manager) stops it as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    url = f"http://{args.host}:{port}"
    print(f"MLflow UI for {redact(uri)} at {url} (Ctrl-C stops it)", flush=True)
    try:
        while server.poll() is None:  # say when it answers; a server that dies says why
            try:
                with socket.create_connection((args.host, port), timeout=1):
                    print(f"MLflow UI ready: {url} (server log {log_file.name})", flush=True)
                    break
            except OSError:
                time.sleep(0.5)
        code = server.wait()
        log_file.seek(0)
        print(f"MLflow UI exited with status {code}:\n{log_file.read()[-3000:]}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        _stop_process_group(server)
        print("MLflow UI stopped", flush=True)
        return 0


def _stop_process_group(server, grace: float = 15.0) -> None:
    """SIGTERM to ``server``'s whole process group, then SIGKILL to what is left after ``grace`` s."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure its children are too
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho ui``."""
    ui = commands.add_parser(
        "ui",
        help="open the MLflow UI on this project's store",
        description="Start the MLflow UI on the project's store (or --tracking-uri), print its URL; Ctrl-C stops it.",
    )
    ui.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    add_server_arguments(ui)
    ui.set_defaults(func=_ui)
