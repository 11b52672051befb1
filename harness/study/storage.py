"""The Optuna storage of a study: an ``RDBStorage`` that rides out a database restart.

Every storage call is retried with backoff (``harness.retry``) when the database connection
fails — a PostgreSQL server restarting, a network blip, a locked sqlite file — and the pool
reconnects (``pool_pre_ping``); when the database stays away for ``$RHO_RETRY_TIMEOUT``
seconds, ``StorageUnavailableError`` says so in one line. A worker's heartbeat keeps its
trial alive through outages shorter than the study's ``limits.grace_period``; after a longer
one, another worker may declare the trial stale and re-queue it (it resumes from its
checkpoint).

A retried write whose first attempt did commit (the connection dropped after the commit)
is recognised for ``set_trial_state_values`` when it finishes a trial; the others are
idempotent, except two whose rare leftover is a RUNNING trial that no worker runs and that
never records a heartbeat, so that Optuna never calls it stale: taking a waiting trial (the
retry sees RUNNING and reports that another worker took it) and creating a trial (the retry
creates a second one). ``harness.study.backend.fail_dead_trials`` fails and re-queues such
trials once they are older than the grace period.

A ``postgresql://`` or ``postgres://`` URL (no driver named) is opened as
``postgresql+psycopg2://`` (``harness.redact.database_url``): SQLAlchemy 2.1 would pick
psycopg 3, which is not installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from harness.redact import database_url, redact
from harness.retry import RetriesExhausted, ServiceUnavailableError, call_with_retries, causes

# The RDBStorage methods Optuna (and its cache layer) calls; each gets retries.
RETRIED_METHODS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


class StorageUnavailableError(ServiceUnavailableError):
    """The study's database stayed unreachable through every retry."""


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a lost or refused database connection (worth retrying)."""
    import sqlalchemy.exc

    for error in causes(exc):
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            text = str(error).lower()
            return not any(f in text for f in ("readonly database", "disk is full", "read-only file system"))
        if isinstance(error, sqlalchemy.exc.DisconnectionError):
            return True
    return False


class ReconnectingRDBStorage(RDBStorage):
    """``RDBStorage`` whose calls are retried while the database is unreachable (see the module doc)."""

    def __init__(self, url: str, **kwargs: Any):
        self._where = redact(url)
        url = database_url(url)
        _retry(self._where, "open the storage", lambda: RDBStorage.__init__(self, url, **kwargs))

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        attempts = []

        def call() -> bool:
            attempts.append(1)
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if len(attempts) > 1 and self._committed(trial_id, state, values):
                    return True  # the previous attempt committed, then the connection dropped
                raise

        return _retry(self._where, "set_trial_state_values", call)

    def trials_with_heartbeat(self, trial_ids: Sequence[int]) -> set[int]:
        """``trials_with_heartbeat``, retried while the database is unreachable."""
        return _retry(self._where, "read heartbeats", lambda: trials_with_heartbeat(self, trial_ids))

    def _committed(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        trial = RDBStorage.get_trial(self, trial_id)
        return trial.state == state and (values is None or list(trial.values or []) == list(values))


def trials_with_heartbeat(storage: RDBStorage, trial_ids: Sequence[int]) -> set[int]:
    """The ids among ``trial_ids`` that have a heartbeat record (Optuna has no call for it)."""
    from optuna.storages._rdb import models

    session = storage.scoped_session()  # the thread's session, as Optuna's own calls use it
    try:
        query = session.query(models.TrialHeartbeatModel.trial_id)
        ids = {row[0] for row in query.filter(models.TrialHeartbeatModel.trial_id.in_(list(trial_ids)))}
        session.commit()
        return ids
    except Exception:
        session.rollback()
        raise


def _retry(where: str, what: str, call: Callable[[], Any]) -> Any:
    try:
        return call_with_retries(call, f"Optuna storage {where}: {what}", connection_lost)
    except RetriesExhausted as exc:
        last = (str(exc.__cause__.__cause__ or exc.__cause__).strip().splitlines() or [""])[0][:300]
        raise StorageUnavailableError(
            f"the study storage {where} is unreachable: {exc} (last error: {redact(last)}); check that the "
            "database is running (or raise RHO_RETRY_TIMEOUT), then re-run the same command: finished trials "
            "are kept"
        ) from None


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ReconnectingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return _retry(self._where, name, lambda: method(self, *args, **kwargs))

    return call


for _name in RETRIED_METHODS:
    setattr(ReconnectingRDBStorage, _name, _retried(_name))
