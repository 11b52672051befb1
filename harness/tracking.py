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
and the run's later calls fail at once rather than each waiting again. MLflow's own HTTP
retries are sized from the same budget (``mlflow_http_settings``).

MLflow is given the URI as ``mlflow_uri`` spells it: a driverless ``postgresql://`` (or
``postgres://``) database URL names the installed driver (psycopg2), and the password of an
``http(s)://user:password@host`` URL is handed over as MLflow's ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` instead, so that nothing MLflow prints or logs (its "View run … at"
line, its warnings and errors) can carry it.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness.redact import database_url, redact
from harness.retry import RetriesExhausted, ServiceUnavailableError, call_with_retries, causes, retry_timeout

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


DISK_FULL_ERRORS = ("database or disk is full", "no space left on device")


class TrackingUnavailableError(ServiceUnavailableError):
    """The MLflow store stayed unreachable through every retry, or cannot be written.

    ``reason``: for a store that cannot be written, the line of the error that says why
    (``database or disk is full``, ``readonly database`` …); else None.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason

    @property
    def disk_full(self) -> bool:
        return self.reason is not None and any(f in self.reason.lower() for f in DISK_FULL_ERRORS)


def _messages(exc: BaseException) -> str:
    return " | ".join(f"{e.__class__.__name__}: {e}" for e in causes(exc)).lower()


def _unwritable_reason(exc: BaseException) -> str:
    """The line of ``exc`` (or of an error it came from) that says why the store cannot be
    written: not SQLAlchemy's notes around it (``raised as a result of Query-invoked
    autoflush …``), nor its ``[SQL: …]`` lines."""
    for error in causes(exc):
        for line in str(error).splitlines():
            if any(fragment in line.lower() for fragment in UNWRITABLE_ERRORS):
                return line.strip()[:300]
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _where(tracking_uri: str) -> str:
    """How messages name the store: a sqlite store by its file, others by their (redacted) URI."""
    if tracking_uri.startswith("sqlite:///"):
        return str(_sqlite_file(tracking_uri))
    return redact(tracking_uri)


def _sqlite_file(tracking_uri: str) -> Path:
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])


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
        reason = redact(_unwritable_reason(exc))
        fix = "free disk space" if any(f in reason.lower() for f in DISK_FULL_ERRORS) else "make it writable"
        message = (
            f"MLflow store {_where(tracking_uri)} cannot be written ({reason}); {fix} (or pass another "
            "--tracking-uri), then re-run the same command: finished runs are kept"
        )
        raise TrackingUnavailableError(message, reason) from None
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


# --- the URI MLflow is given, and MLflow's HTTP retries --------------------------------------

HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
HTTP_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
HTTP_JITTER = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
MLFLOW_MAX_RETRIES, MLFLOW_MAX_TIMEOUT, MLFLOW_BACKOFF, MLFLOW_JITTER = 7, 120, 2, 1.0  # MLflow's defaults
URLLIB3_MAX_WAIT = 120.0  # urllib3's cap on one wait between retries
_SET_HERE: dict[str, str] = {}  # the MLflow settings this process put in its environment, and their values


def mlflow_uri(tracking_uri: str) -> str:
    """``tracking_uri`` as MLflow is given it (the harness keeps using the user's spelling).

    - ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg2://`` (the installed driver).
    - ``http(s)://user:password@host…`` loses its ``user:password@``: they are set as
      ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (this process's environment, which
      MLflow reads for each request and child processes inherit), so that no URL MLflow prints
      or logs holds the password. The URL's credentials win over those variables, as before.
    - For http(s), MLflow's HTTP retry settings are sized from the retry budget
      (``configure_mlflow_http``).
    """
    uri = database_url(tracking_uri)
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return uri
    configure_mlflow_http()
    if parts.password is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _mlflow_retry_waits(retries: int, factor: float, jitter: float) -> float:
    """The longest total of urllib3's waits between ``retries`` retries of one MLflow request:
    none before the first retry, then ``factor`` × 2, 4, 8 … s (each at most 120) plus the jitter."""
    return sum(min(URLLIB3_MAX_WAIT, factor * 2 ** (n - 1) + jitter) for n in range(2, retries + 1))


def mlflow_http_settings(budget: float, given: dict[str, str] | None = None) -> dict[str, str]:
    """MLflow's HTTP retry settings for the retry budget ``budget`` (``$RHO_RETRY_TIMEOUT``),
    for those not in ``given`` (the settings the user chose, which are kept).

    One MLflow request with all its own retries, their waits and timeouts, fits in the budget,
    so that the harness's retries (``harness.retry``), not MLflow's, decide how long an
    unreachable server is waited for: ``MLFLOW_HTTP_REQUEST_TIMEOUT`` is half the budget (1 to
    120 s, MLflow's default), ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` as many retries (at most
    MLflow's 7) as fit in the budget with it. A budget of 0 (retries off) turns MLflow's retries
    off too and leaves its timeout.
    """
    given = dict(given or {})
    try:
        factor = float(given.get(HTTP_BACKOFF, MLFLOW_BACKOFF))
        jitter = float(given.get(HTTP_JITTER, MLFLOW_JITTER))
        retries = int(given[HTTP_RETRIES]) if HTTP_RETRIES in given else None
        timeout = int(given[HTTP_TIMEOUT]) if HTTP_TIMEOUT in given else None
    except ValueError:  # MLflow itself reports a bad value of the user's
        return {}
    if budget <= 0:
        return {} if retries is not None else {HTTP_RETRIES: "0"}
    settings: dict[str, str] = {}
    if timeout is None:
        timeout = int(min(MLFLOW_MAX_TIMEOUT, max(1, math.floor(budget / 2))))
        settings[HTTP_TIMEOUT] = str(timeout)
    if retries is None:
        retries = 0
        while (
            retries < MLFLOW_MAX_RETRIES
            and (retries + 2) * timeout + _mlflow_retry_waits(retries + 1, factor, jitter) <= budget
        ):
            retries += 1
        settings[HTTP_RETRIES] = str(retries)
    return settings


def configure_mlflow_http() -> None:
    """Put ``mlflow_http_settings`` for ``$RHO_RETRY_TIMEOUT`` in the environment (MLflow reads it
    for each request), leaving the settings the user chose; settings this process put there
    earlier are recomputed."""
    names = (HTTP_RETRIES, HTTP_TIMEOUT, HTTP_BACKOFF, HTTP_JITTER)
    given = {
        name: os.environ[name]
        for name in names
        if name in os.environ and _SET_HERE.get(name) != os.environ[name]
    }
    for name in names:
        if name not in given and _SET_HERE.pop(name, None) is not None:
            os.environ.pop(name, None)
    for name, value in mlflow_http_settings(retry_timeout(), given).items():
        os.environ[name] = _SET_HERE[name] = value


# --- opening the store ---------------------------------------------------------------------------

_OPENED: set[str] = set()  # the sqlite stores this process has opened (their schema is in place)


class _QuietUnwritable(logging.Filter):
    """Drops MLflow's traceback of a store that cannot be written (full disk, read-only): the
    harness reports it in one line (``tracking_call``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not _unwritable(error)


def _quiet_mlflow_store_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _QuietUnwritable) for f in logger.filters):
        logger.addFilter(_QuietUnwritable())


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri`` (given to MLflow as ``mlflow_uri``); a sqlite
    store's schema is created or migrated once.

    MLflow builds a new sqlite store's tables (and runs its migrations) on first use, and two
    processes doing that at once on the same file break each other (``duplicate column name``,
    an alembic ``CommandError``). So the first use per process happens under an exclusive lock
    on ``<database>.lock``: the first process builds the schema, the others wait and find it.

    When building a new store fails (a full disk), the half-made file, which holds nothing, is
    removed, so that re-running starts clean instead of failing on its half-made tables; a full
    disk is then one line that says so and names the file.
    """
    uri = mlflow_uri(tracking_uri)
    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _OPENED:
        return MlflowClient(uri)
    _quiet_mlflow_store_errors()
    database = _sqlite_file(tracking_uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # MlflowClient() itself opens the store
        new = not database.exists() or database.stat().st_size == 0
        try:
            client = tracking_call(tracking_uri, "open store", lambda: MlflowClient(uri))
            tracking_call(tracking_uri, "open store", lambda: client.search_experiments(max_results=1))
        except BaseException as exc:
            if not new:
                raise
            _remove_half_made(database, uri)
            if isinstance(exc, TrackingUnavailableError) and exc.disk_full:
                raise TrackingUnavailableError(
                    f"could not create the MLflow store {database}: the disk is full ({exc.reason}); the "
                    "half-made file was removed: free disk space (or pass another --tracking-uri), then "
                    "re-run the same command",
                    exc.reason,
                ) from None
            raise
    _OPENED.add(tracking_uri)
    return client


def _remove_half_made(database: Path, uri: str) -> None:
    """Remove a sqlite store whose creation failed (and its journal), and forget MLflow's engine
    on it, whose pooled connections would write to the removed file."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
        if engine is not None:
            engine.dispose()
    except Exception as exc:  # a later MLflow without that cache: nothing to forget
        log.debug("could not drop MLflow's engine of %s: %s", database, exc)
    for path in (database, *(Path(f"{database}{suffix}") for suffix in ("-journal", "-wal", "-shm"))):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the half-made MLflow store file %s: %s", path, exc)


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
                self.run_id, sampling_interval=10, tracking_uri=mlflow_uri(self.tracking_uri)
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
