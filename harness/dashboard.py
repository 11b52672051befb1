"""``rho dashboard STUDY``: optuna-dashboard on a study's storage, for the Optuna view of a study
(optimisation history, parameter importances, intermediate values of pruned trials).

Served in this process by a small threaded WSGI server bound to 127.0.0.1 on a free port (port 0
lets the OS pick it, so there is no race for the port); Ctrl-C closes it.
"""

from __future__ import annotations

from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # one line per request is noise in a terminal
        pass


def dashboard_server(storage_url: str, study: str, host: str = "127.0.0.1", port: int = 0):
    """A ready (bound, not yet serving) optuna-dashboard server for ``storage_url``, and the URL of
    ``study``'s page. Raises KeyError when the storage has no such study."""
    from optuna_dashboard import wsgi

    storage = optuna.storages.get_storage(storage_url)
    study_id = storage.get_study_id_from_name(study)  # KeyError when missing
    server = make_server(
        host, port, wsgi(storage), server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    bound_host, bound_port = server.server_address[:2]
    return server, f"http://{bound_host}:{bound_port}/dashboard/studies/{study_id}"
