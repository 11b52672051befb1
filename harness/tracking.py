"""MLflow tracking: one run per pretraining, batched metrics, system metrics, artifacts.

The store is ``--tracking-uri``, else ``runtime.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
else the embedded default ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts`` (MLflow's file store is in maintenance mode and is not used).

Metrics are buffered and sent with ``log_batch`` (every ``flush_every`` values and at each
epoch's end), so logging costs a few calls per epoch, not one per value. Passwords in URLs
are redacted wherever a URL is logged or printed.

Every call to the store is retried with backoff while the store is unreachable (a tracking
server restarting, a locked sqlite file; ``harness.retry``); when it stays unreachable, or
cannot be written (read-only, full disk), ``TrackingUnavailableError`` says so in one line
and the run's later calls fail at once rather than each waiting again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness.redact import redact
from harness.retry import RetriesExhausted, ServiceUnavailableError, call_with_retries, causes

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")
MAX_PARAM_LENGTH = 6000
T = TypeVar("T")

# Lower-case fragments of the errors MLflow raises for a store that is down for a while, and for
# one that cannot be written at all (retrying does not help those).
PASSING_ERRORS = (
    "max retries exceeded",
    "connection refused",
    "connection aborted",
    "connection reset",
    "remote end closed connection",
    "read timed out",
    "database is locked",
    "error code 502",
    "error code 503",
    "error code 504",
    "too many 502 error responses",
    "too many 503 error responses",
    "too many 504 error responses",
)
UNWRITABLE_ERRORS = (
    "readonly database",
    "read-only file system",
    "database or disk is full",
    "no space left on device",
    "unable to open database file",
    "permission denied",
)


class TrackingUnavailableError(ServiceUnavailableError):
    """The MLflow store stayed unreachable through every retry, or cannot be written."""


def _messages(exc: BaseException) -> str:
    return " | ".join(f"{e.__class__.__name__}: {e}" for e in causes(exc)).lower()


def _passing(exc: BaseException) -> bool:
    import requests

    if any(isinstance(e, (requests.ConnectionError, requests.Timeout)) for e in causes(exc)):
        return True
    text = _messages(exc)
    return any(fragment in text for fragment in PASSING_ERRORS) and not _unwritable(exc)


def _unwritable(exc: BaseException) -> bool:
    text = _messages(exc)
    return any(fragment in text for fragment in UNWRITABLE_ERRORS)


def tracking_call(tracking_uri: str, what: str, call: Callable[[], T]) -> T:
    """``call()`` against the MLflow store, retried while the store is unreachable.

    Raises:
        TrackingUnavailableError: the store stayed unreachable for ``$RHO_RETRY_TIMEOUT``
            seconds, or it cannot be written (read-only, full disk).
    """
    where = redact(tracking_uri)
    try:
        return call_with_retries(call, f"MLflow {what} at {where}", _passing)
    except RetriesExhausted as exc:
        last = (str(exc.__cause__).strip().splitlines() or [""])[0][:300]
        message = (
            f"MLflow tracking at {where} is unreachable: {exc} (last error: {redact(last)}); check that "
            "the tracking server is running (or raise RHO_RETRY_TIMEOUT), then re-run the same command: "
            "finished runs and trials are kept"
        )
    except Exception as exc:
        if not _unwritable(exc):
            raise
        reason = next((str(e) for e in causes(exc) if _unwritable(e)), str(exc))
        reason = (reason.strip().splitlines() or [""])[0][:300]
        message = (
            f"MLflow store {where} cannot be written ({redact(reason)}); free disk space or make it "
            "writable (or pass another --tracking-uri), then re-run the same command: finished runs are kept"
        )
    raise TrackingUnavailableError(message) from None


def default_tracking_uri() -> str:
    """The embedded store under ./mlruns (absolute, so child processes agree)."""
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def resolve_tracking_uri(*candidates: str | None) -> str:
    """The first given URI, else ``$MLFLOW_TRACKING_URI``, else the embedded default."""
    for uri in (*candidates, os.environ.get("MLFLOW_TRACKING_URI")):
        if uri:
            return uri
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return default_tracking_uri()


_OPENED: set[str] = set()  # the sqlite stores this process has opened (their schema is in place)


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri``; a sqlite store's schema is created or migrated once.

    MLflow builds a new sqlite store's tables (and runs its migrations) on first use, and two
    processes doing that at once on the same file break each other (``duplicate column name``,
    an alembic ``CommandError``). So the first use per process happens under an exclusive lock
    on ``<database>.lock``: the first process builds the schema, the others wait and find it.
    """
    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _OPENED:
        return MlflowClient(tracking_uri)
    database = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # MlflowClient() itself opens the store
        client = tracking_call(tracking_uri, "open store", lambda: MlflowClient(tracking_uri))
        tracking_call(tracking_uri, "open store", lambda: client.search_experiments(max_results=1))
    _OPENED.add(tracking_uri)
    return client


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (with artifacts under mlruns/artifacts for sqlite stores) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///")).parent
        location = (store / "artifacts").resolve().as_uri()
    try:
        # The experiment kind makes MLflow 3's UI open on the runs table, not its GenAI overview.
        return client.create_experiment(
            name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except Exception:  # another worker created it in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def environment_tags() -> dict[str, str]:
    """Git commit, package versions and host, for reproducibility."""
    tags = {"host": platform.node(), "python": platform.python_version()}
    for package in ("torch", "torchvision", "pytorchvideo", "av", "mlflow", "optuna", "rho-harness"):
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        tags["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


class RunLogger:
    """One MLflow run: params, tags, buffered metrics, artifacts and system metrics.

    Args:
        tracking_uri: the store.
        experiment: experiment name (created when missing).
        run_name: display name of a new run.
        run_id: continue this run instead (resume).
        parent_run_id: nest the new run under this one (study trials).
        system_metrics: sample CPU/memory/GPU into the run in the background.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = True,
        flush_every: int = 200,
    ):
        self.tracking_uri = tracking_uri
        self.client = mlflow_client(tracking_uri)
        self.flush_every = flush_every
        self.unavailable: str | None = None  # set once the store failed for good: later calls fail fast
        self._buffer: list[Metric] = []
        if run_id is None:
            experiment_id = self._call(
                "experiment", lambda: ensure_experiment(self.client, experiment, tracking_uri)
            )
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self._call(
                "create run", lambda: self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            )
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self._call("update run", lambda: self.client.update_run(run_id, status="RUNNING"))
            if tags:
                self.set_tags(tags)
        self._monitor = None
        if system_metrics:
            self._start_system_metrics()

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """One call to the store, through ``tracking_call``; fails at once after the store failed for good."""
        if self.unavailable is not None:
            raise TrackingUnavailableError(self.unavailable)
        try:
            return tracking_call(self.tracking_uri, what, call)
        except TrackingUnavailableError as exc:
            self.unavailable = str(exc)
            raise

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=10, tracking_uri=self.tracking_uri
            )
            self._monitor.start()
        except Exception as exc:  # system metrics are a convenience: never fail a run for them
            log.warning("system metrics disabled: %s", exc)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params in batches of 100 (MLflow's limit), values as strings."""
        items = [Param(k, redact(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self._call(
                "log params", lambda c=chunk: self.client.log_batch(self.run_id, params=c, synchronous=True)
            )

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self._call(
                "set tags", lambda c=chunk: self.client.log_batch(self.run_id, tags=c, synchronous=True)
            )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metrics; they are sent every ``flush_every`` values and on ``flush``."""
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk = self._buffer[:1000]
            self._call(
                "log metrics", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c, synchronous=True)
            )
            self._buffer = self._buffer[1000:]  # dropped only once sent: a failed flush keeps them

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._call("log artifact", lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def log_text(self, text: str, name: str) -> None:
        """Log ``text`` as the artifact ``name``, URL passwords redacted (a config may hold a store URL)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(redact(text))
            self.log_artifact(path)

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, stop system metrics and close the run with ``status`` (FINISHED, FAILED, KILLED)."""
        try:
            self.flush()
        finally:
            if self._monitor is not None:
                try:
                    self._monitor.finish()
                except Exception as exc:
                    log.warning("system metrics did not stop cleanly: %s", exc)
                self._monitor = None
            self._call("end run", lambda: self.client.set_terminated(self.run_id, status))
