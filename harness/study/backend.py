"""The study's Optuna backend: storage URL and storage, sampler and pruner, and the reads and writes
of trials in the storage. With ``harness.study.queries`` (its read-only SQL on Optuna's tables), the
one module that reaches into Optuna's internals (a study's storage and cache, a trial's id, the
system attributes Optuna keeps); the rest of the study code goes through them."""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from harness.preflight import check_store
from harness.redact import database_url
from harness.study import queries
from harness.study.attrs import ATTR_REASON
from harness.study.spec import StudySpec
from harness.study.storage import ReconnectingRDBStorage, trials_with_heartbeat

log = logging.getLogger(__name__)

ATTR_PREEMPTED = "preempted"  # trial: why and where a stopped worker put it back in the queue

# We drive heartbeats ourselves (ask/tell with a heartbeat thread), which Optuna warns about.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def resolve_storage(url: str | None) -> str:
    """``--storage``, else ``$RHO_STORAGE``, else the embedded sqlite file under ./mlruns; a
    driverless ``postgresql://`` URL names the installed driver (``database_url``)."""
    url = url or os.environ.get("RHO_STORAGE")
    if url:
        return database_url(url)
    Path("mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{Path('mlruns/optuna.db').resolve()}"


def make_storage(url: str, spec: StudySpec | None = None) -> RDBStorage:
    """An RDBStorage with heartbeats that rides out database restarts (``harness.study.storage``);
    stale trials are retried up to ``limits.max_retries`` times."""
    check_store(url, "Optuna storage")
    limits = spec.limits if spec else {"heartbeat_interval": 10, "grace_period": 60, "max_retries": 2}
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return ReconnectingRDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=int(limits["heartbeat_interval"]) or 1,
        grace_period=int(limits["grace_period"]) or 2,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=limits["max_retries"]),
    )


def open_study(spec: StudySpec, storage: RDBStorage) -> optuna.Study:
    """Create or load the Optuna study of ``spec``."""
    sampler = (
        optuna.samplers.RandomSampler(seed=spec.seeds[0])
        if spec.sampler == "random"
        else optuna.samplers.TPESampler(
            seed=spec.seeds[0], n_startup_trials=max(2, min(10, spec.n_trials // 3))
        )
    )
    return optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(**pruner_settings(spec)),
        direction=spec.direction,
        load_if_exists=True,
    )


def pruner_settings(spec: StudySpec) -> dict[str, Any]:
    """``make_pruner``'s arguments for ``spec`` (plain values, so that a torchrun trial's ranks get
    them as JSON): its pruner and warm-up, the epochs of its validated base experiment, the pruner
    metric's direction (``pruning_callback``) and the ``asha`` rungs."""
    epochs = spec.experiment({}, spec.seeds[0], check_files=False).optim.epochs
    return {
        "kind": spec.pruner,
        "warmup": spec.pruner_warmup,
        "epochs": epochs,
        "direction": spec.pruner_direction,
        **spec.pruner_asha,
    }


def make_pruner(
    kind: str,
    warmup: int,
    epochs: int,
    direction: str = "maximize",
    min_resource: int | None = None,
    reduction_factor: int = 3,
    min_early_stopping_rate: int = 0,
) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a spec's ``pruner`` (``none``, ``median``, ``hyperband``, ``asha``); a step
    is an epoch. ``direction`` is the metric's, used by ``pruning_callback``, not here."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=epochs)
    if kind == "asha":  # asynchronous successive halving: rungs at min_resource * factor**(rate + k) epochs
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource or max(1, warmup),
            reduction_factor=reduction_factor,
            min_early_stopping_rate=min_early_stopping_rate,
        )
    return optuna.pruners.NopPruner()


ATTR_PRUNED_AT = "pruned_at_epoch"


def pruning_callback(
    trial: optuna.Trial, metric: str, direction: str = "maximize", epochs: int | None = None
) -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch_end`` that reports ``metric`` to Optuna and raises TrialPruned when the pruner says so.

    Optuna's pruners rank intermediate values in the study's direction (the objective's); a metric
    of the other direction (``loss`` in a study that maximizes an accuracy) is reported negated, so
    that better is always the study's better. Before raising, the trial's ``pruned_at_epoch``
    attribute is set (written to the storage: a torchrun rank 0 sets it too). A trial whose epochs
    lack ``metric`` is never pruned (warned once); nor is one after its last epoch (``epochs``): its
    training is done, and stopping it then would only lose its result."""
    sign = 1.0 if direction == trial.study.direction.name.lower() else -1.0
    warned = []

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            if not warned:
                log.warning("pruner metric %r not logged after epoch %d; not pruning", metric, epoch)
                warned.append(True)
            return
        value = sign * float(metrics[metric])
        if math.isnan(value):  # a diverged trial: the worst value in the study's direction
            value = -math.inf if trial.study.direction.name == "MAXIMIZE" else math.inf
        trial.report(value, epoch)
        if (epochs is None or epoch < epochs) and trial.should_prune():
            set_trial_attr(trial, ATTR_PRUNED_AT, epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric}={metrics[metric]:.4g}")

    return report_epoch


def open_trial(study_name: str, storage_url: str, trial_id: int, pruner: dict[str, Any]) -> optuna.Trial:
    """The running trial ``trial_id`` of a study, opened from another process (a torchrun rank)
    with the study's pruner (``pruner_settings``)."""
    study = optuna.load_study(
        study_name=study_name, storage=make_storage(storage_url), pruner=make_pruner(**pruner)
    )
    return optuna.trial.Trial(study, trial_id)


def delete_from_storage(study: optuna.Study) -> None:
    """Delete the study and its trials from its storage."""
    optuna.delete_study(study_name=study.study_name, storage=study._storage)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (unique across studies, unlike its number)."""
    return trial._trial_id


def stored_trial(trial: optuna.Trial) -> FrozenTrial:
    """The trial as its storage has it now (attributes set by other code or processes included)."""
    return trial.study._storage.get_trial(trial._trial_id)


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    """The study's trial ``number`` as its storage has it now: that trial alone is read
    (``study.trials[number]`` reads every trial)."""
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def take_trial(study: optuna.Study) -> optuna.Trial:
    """``study.ask()`` without reading every trial of the study: the first WAITING trial (in number
    order) that this worker moves to RUNNING, else a new trial.

    Taking a waiting trial is the compare-and-set Optuna's ``ask`` does (the storage moves it to
    RUNNING only if it is still WAITING; another worker's trial is skipped), so two workers never
    take the same one; only the list of waiting trials comes from one query
    (``queries.waiting_trials``) instead of a FrozenTrial of every trial, which Optuna's cache
    builds on its first read in a process. The trial taken is entered in that cache, as ``ask``
    does, since Optuna's writes of its params look it up there.
    """
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    storage = study._storage
    if queries.database(study) is None:
        return study.ask()
    study._thread_local.cached_all_trials = None  # as ask: samplers read the trials afresh
    taken = None
    for waiting, _ in queries.waiting_trials(study):
        try:
            if storage.set_trial_state_values(waiting, state=TrialState.RUNNING):
                taken = waiting
                break
        except UpdateFinishedTrialError:  # another worker took it and finished it
            continue
    if taken is None:
        return optuna.Trial(study, storage.create_new_trial(study._study_id))  # cached by Optuna
    if isinstance(storage, _CachedStorage):
        frozen = storage.get_trial(taken)
        with storage._lock:
            storage._studies.setdefault(study._study_id, _StudyInfo())
            storage._add_trials_to_cache(study._study_id, [frozen])
    return optuna.Trial(study, taken)


def set_trial_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """Write a user attribute of the trial straight to its storage."""
    trial.study._storage.set_trial_user_attr(trial._trial_id, key, value)


def record_heartbeat(trial: optuna.Trial) -> None:
    """Tell the storage that the trial's worker is alive (``limits.heartbeat_interval``)."""
    trial.study._storage.record_heartbeat(trial._trial_id)


def was_enqueued(frozen: FrozenTrial) -> bool:
    """Whether the trial was queued with fixed parameters (``Study.enqueue_trial``), not sampled."""
    return "fixed_params" in frozen.system_attrs


def retry_of(frozen: FrozenTrial) -> int | None:
    """The number of the stale trial this one retries (``RetryHeartbeatStaleTrialCallback``), if any."""
    return frozen.system_attrs.get("failed_trial")


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the trials no live worker runs, and re-queue them (``limits.max_retries``).

    Two kinds: a RUNNING trial whose heartbeat is older than the storage's grace period
    (Optuna's ``fail_stale_trials``: its worker died), and a RUNNING trial that never recorded
    a heartbeat and started more than the grace period ago. Optuna never calls the
    second kind stale, yet it arises: a worker killed between taking a trial and its first
    heartbeat, or a database connection cut after the commit of "WAITING → RUNNING" (the
    retried call then sees RUNNING and reports that another worker took the trial) or of
    "create trial" (the retried call creates a second one). Its start time is the clock of the
    machine that took it, so clocks of workers must agree to well within the grace period.
    Both are failed with a ``failure_reason`` that says which (the copy re-queued has none).
    Returns the numbers of the orphans failed here.
    """
    _fail_stale_trials(study)
    storage = study._storage  # Optuna's cache in front of the RDBStorage: writes go through it
    database = getattr(storage, "_backend", storage)
    if not isinstance(database, RDBStorage) or database.heartbeat_interval is None:
        return []
    grace_period = database.grace_period or 2 * database.heartbeat_interval
    oldest = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=grace_period)
    candidates = queries.running_since(study, oldest)  # naive UTC, as Optuna stores start times
    if not candidates:
        return []
    ids = [candidate for candidate, _ in candidates]
    beating = (
        database.trials_with_heartbeat(ids)
        if isinstance(database, ReconnectingRDBStorage)
        else trials_with_heartbeat(database, ids)
    )
    failed = []
    reason = (
        "no worker ran it: it never recorded a heartbeat (its worker died or lost the database while "
        "taking it); re-queued"
    )
    for candidate, number in candidates:
        if candidate in beating:
            continue
        try:  # the reason first: a finished trial takes no more attributes
            storage.set_trial_user_attr(candidate, ATTR_REASON, reason)
            if not storage.set_trial_state_values(candidate, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            retry = copy.deepcopy(storage.get_trial(candidate))
            retry.user_attrs.pop(ATTR_REASON, None)  # the copy re-queued is not a failure
            retry.user_attrs.pop(ATTR_PREEMPTED, None)  # nor the stopped run's continuation
            callback(study, retry)
        failed.append(number)
    return failed


def _fail_stale_trials(study: optuna.Study) -> list[int]:
    """Optuna's ``fail_stale_trials`` (fail the RUNNING trials whose heartbeat is older than the grace
    period, then re-queue a copy through the storage's stale-trial callback), with a
    ``failure_reason`` on each failed trial, set before it is failed (a finished trial takes no
    more attributes); returns the numbers failed here."""
    storage = study._storage
    database = getattr(storage, "_backend", storage)
    if not isinstance(database, RDBStorage) or database.heartbeat_interval is None:
        fail_stale_trials(study)
        return []
    grace_period = database.grace_period or 2 * database.heartbeat_interval
    reason = (
        f"its worker stopped recording heartbeats for over {grace_period} s (the worker was killed, or "
        "its machine died or lost the storage); re-queued"
    )
    failed = []
    for stale in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(stale, ATTR_REASON, reason)
            if storage.set_trial_state_values(stale, state=TrialState.FAIL):
                failed.append(stale)
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
    callback = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for stale in failed:
        trial = storage.get_trial(stale)
        numbers.append(trial.number)
        if callback is not None:
            retry = copy.deepcopy(trial)
            retry.user_attrs.pop(ATTR_REASON, None)  # the copy re-queued is not a failure
            retry.user_attrs.pop(ATTR_PREEMPTED, None)  # nor the stopped run's continuation
            callback(study, retry)
    return numbers


def requeue_trial(trial: optuna.Trial, note: str) -> None:
    """Put a RUNNING trial back in the queue (WAITING, the same trial: not a failure), for a worker
    that was asked to stop (a stop signal) after its run wrote a checkpoint; the worker that takes
    it next resumes there. ``note`` (why, and where it stopped) goes in the trial's ``preempted``
    attribute; its heartbeat record is removed, so that it is not taken for stale while it waits or
    in the moment between being taken again and the next heartbeat."""
    from optuna.storages._rdb import models

    storage = trial.study._storage
    set_trial_attr(trial, ATTR_PREEMPTED, note)
    database = getattr(storage, "_backend", storage)
    if isinstance(database, RDBStorage):
        session = database.scoped_session()
        try:
            session.query(models.TrialHeartbeatModel).filter(
                models.TrialHeartbeatModel.trial_id == trial._trial_id
            ).delete()
            session.commit()
        except Exception:
            session.rollback()
            raise
    storage.set_trial_state_values(trial._trial_id, state=TrialState.WAITING)


def was_preempted(frozen: FrozenTrial) -> bool:
    """Whether the trial was put back in the queue by a stopped worker (``requeue_trial``)."""
    return ATTR_PREEMPTED in frozen.user_attrs


def claim_study_attr(study: optuna.Study, key: str, value: Any) -> Any:
    """Set the study's user attribute ``key`` to ``value`` unless it already has one, atomically;
    returns the value that holds (``value`` when this call set it, else the one stored first).

    Optuna's ``set_user_attr`` is an upsert (the last writer wins, and each writer reads back its
    own value in between), so two processes could each believe they set it. This is a plain
    INSERT into Optuna's study attribute table, whose (study, key) unique constraint lets exactly
    one writer succeed, on sqlite and PostgreSQL alike: a compare-and-set.
    """
    import json

    from optuna.storages._rdb import models
    from sqlalchemy.exc import IntegrityError

    storage = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache layer
    study_id = storage.get_study_id_from_name(study.study_name)
    table = models.StudyUserAttributeModel.__table__
    try:
        with storage.engine.begin() as connection:
            connection.execute(
                table.insert().values(study_id=study_id, key=key, value_json=json.dumps(value))
            )
    except IntegrityError:
        return storage.get_study_user_attrs(study_id)[key]
    return value


def study_summaries(storage: RDBStorage) -> list[dict[str, Any]]:
    """Every study of ``storage`` (name, trials, started, best: its first objective's best value
    over COMPLETE trials), in three aggregate queries whatever the number of trials:
    ``optuna.get_all_study_summaries`` loads every trial (~1.4 ms and 47 KB each; minutes and
    gigabytes at 100k trials). ``started`` is in local time, as Optuna shows it."""
    import datetime

    from optuna.storages._rdb import models
    from optuna.study import StudyDirection
    from optuna.trial import TrialState
    from sqlalchemy import func, select

    study, trial, value, direction = (
        models.StudyModel,
        models.TrialModel,
        models.TrialValueModel,
        models.StudyDirectionModel,
    )
    engine = getattr(storage, "_backend", storage).engine
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                study.study_id,
                study.study_name,
                func.count(trial.trial_id),
                func.min(trial._datetime_start_utc),
            )  # naive UTC, as stored
            .select_from(study)
            .outerjoin(trial, trial.study_id == study.study_id)
            .group_by(study.study_id, study.study_name)
            .order_by(study.study_id)
        ).all()
        directions = dict(
            connection.execute(
                select(direction.study_id, direction.direction).where(direction.objective == 0)
            ).all()
        )
        bounds = {
            study_id: (low, high)
            for study_id, low, high in connection.execute(
                select(trial.study_id, func.min(value.value), func.max(value.value))
                .join(value, value.trial_id == trial.trial_id)
                .where(trial.state == TrialState.COMPLETE, value.objective == 0)
                .group_by(trial.study_id)
            ).all()
        }
    out = []
    for study_id, name, trials, started in rows:
        if started is not None:  # shown in local time, as Optuna shows it
            started = started.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)
        low, high = bounds.get(study_id, (None, None))
        best = high if directions.get(study_id) == StudyDirection.MAXIMIZE else low
        out.append({"name": name, "trials": trials, "started": started, "best": best})
    return out
