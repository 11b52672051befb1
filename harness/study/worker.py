"""A study's worker: take trials and run them, each a pretraining in an MLflow child run.

A worker (``run_worker``) loops: fail stale trials (a dead worker's trial is marked failed
and re-queued by ``RetryHeartbeatStaleTrialCallback``), take the next waiting trial — or ask
the sampler for a new one while the search budget lasts (``harness.study.queue``) — and run it
with a heartbeat thread. A trial's checkpoint folder is a function of its point and seed, so a
re-queued trial resumes where the dead one stopped.

None of this reads every trial of the study (``harness.study.queries``): a worker that joins a
study of 100k stored trials starts its first grid trial as fast as one that joins an empty study.
A sampled trial's sampler and a pruner read the study's trials through Optuna's cache, which
loads them all once per worker: they need the history.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.errors import EnvironmentFailure
from harness.preflight import check_store
from harness.redact import redact
from harness.runtime import Preempted, signal_name, stop_requested, stop_signals
from harness.study import queries
from harness.study.attrs import (
    ATTR_DEVICE_SECONDS,
    ATTR_DURATION,
    ATTR_KEY,
    ATTR_METRIC_PREFIX,
    ATTR_POINT,
    ATTR_REASON,
    ATTR_RUN,
    ATTR_SEED,
)
from harness.study.backend import (
    ATTR_PRUNED_AT,
    fail_dead_trials,
    make_storage,
    open_study,
    pruning_callback,
    record_heartbeat,
    requeue_trial,
    retry_of,
    set_trial_attr,
    stored_trial,
    trial_by_number,
    trial_id,
    was_preempted,
)
from harness.study.launch import forward_signal, run_torchrun, trial_run_name
from harness.study.lifecycle import ensure_parent_run, finish_parent_run
from harness.study.queue import next_trial, trial_point, wait_for_stale
from harness.study.spec import StudySpec, dump_point
from harness.tracking import resolve_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
    pruned: int = 0
    preempted: int = 0  # 1 when a stop signal ended the worker (its trial, if any, re-queued)
    over_budget: bool = False  # it stopped because the study spent ``limits.device_hours``


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds from a daemon thread."""

    def __init__(self, trial: optuna.Trial, interval: float):
        self.trial, self.interval = trial, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                record_heartbeat(self.trial)
            except Exception as exc:  # a storage hiccup: the next beat tries again
                log.warning("heartbeat of trial %s failed: %s", trial_id(self.trial), redact(str(exc)))

    def __enter__(self) -> Heartbeat:
        record_heartbeat(self.trial)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join()


def run_worker(
    spec: StudySpec,
    storage_url: str,
    tracking_uri: str | None = None,
    gpus_per_trial: int = 0,
    quiet: bool = False,
) -> WorkerReport:
    """Take and run trials of ``spec`` until none is left (or a limit is reached — ``limits.timeout``,
    ``max_failures``, ``device_hours`` —, or a stop signal came: the trial under way stops at a step with a checkpoint there and is put back in the queue,
    not failed, and resumes there when a worker takes it again)."""
    storage = make_storage(storage_url, spec)
    study = open_study(spec, storage)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    check_store(tracking_uri, "MLflow store")
    parent_run_id = ensure_parent_run(study, spec, tracking_uri)
    report = WorkerReport()
    started = time.monotonic()
    timeout, max_failures = spec.limits["timeout"], spec.limits["max_failures"]
    device_hours = spec.limits.get("device_hours")
    # A stop signal (runtime.stop_signals) stops the trial at a step with a checkpoint there and
    # re-queues it; a torchrun trial gets the signal too (forward_signal).
    with stop_signals(stop_signal_names(spec), on_signal=forward_signal):
        while True:
            if stop_requested():  # a stop signal between trials: take no more
                print(f"worker stopped by {signal_name(stop_requested())}; taking no more trials", flush=True)
                report.preempted += 1
                break
            if timeout is not None and time.monotonic() - started > timeout:
                print(
                    f"study {spec.name}: timeout of {timeout} s reached; not starting more trials", flush=True
                )
                break
            if max_failures is not None and _count(study, TrialState.FAIL) >= max_failures:
                print(
                    f"study {spec.name}: {max_failures} failed trials; stopping (limits.max_failures)",
                    flush=True,
                )
                break
            if device_hours is not None:
                spent = device_seconds_spent(study) / 3600
                if spent >= device_hours:
                    print(
                        f"study {spec.name}: compute budget spent: its trials used {spent:.4g} "
                        f"device-hours of the {device_hours:g} allowed (limits.device_hours); "
                        "not starting more trials",
                        flush=True,
                    )
                    report.over_budget = True
                    break
            fail_dead_trials(study)
            trial = next_trial(study, spec)
            if trial is None:
                if wait_for_stale(study, spec):
                    continue
                break
            record_heartbeat(trial)  # at once: a RUNNING trial without one is taken for an orphan
            state = _run_trial(
                study,
                spec,
                trial,
                storage_url=storage.url,
                tracking_uri=tracking_uri,
                parent_run_id=parent_run_id,
                gpus_per_trial=gpus_per_trial,
                quiet=quiet,
            )
            report.completed += state == TrialState.COMPLETE
            report.failed += state == TrialState.FAIL
            report.pruned += state == TrialState.PRUNED
            if state == TrialState.WAITING:  # stopped by a signal and re-queued: take no more
                report.preempted += 1
                break
        if stop_requested() and not report.preempted:  # the signal came while it waited or finished
            report.preempted = 1
    finish_parent_run(study, tracking_uri)  # the last worker out closes the study's parent run
    return report


def stop_signal_names(spec: StudySpec) -> list[str]:
    """The stop signals of the spec's base experiment (``runtime.stop_signals``): what a worker and
    ``rho study run`` catch."""
    return spec.experiment({}, spec.seeds[0], check_files=False).runtime.stop_signals


def _count(study: optuna.Study, state: TrialState) -> int:
    return queries.count_trials(study, (state,))


def device_seconds_spent(study: optuna.Study) -> float:
    """The device-seconds the study's trials trained, finished or running (their ``cost.device_seconds``
    attribute, set at each epoch end and when the trial ends): per point, the largest of its
    attempts' (a retried attempt resumes its point's checkpoint, whose totals carry the earlier
    attempts' on), summed over points. Work lost with an attempt that died before a checkpoint
    is not counted."""
    per_point: dict[str, float] = {}
    attrs = queries.attrs_of_trials_with(study, ATTR_DEVICE_SECONDS, (ATTR_DEVICE_SECONDS, ATTR_KEY))
    for number, values in attrs.items():
        key = values.get(ATTR_KEY, f"trial-{number}")
        per_point[key] = max(per_point.get(key, 0.0), float(values[ATTR_DEVICE_SECONDS]))
    return sum(per_point.values())


def _record_cost(trial: optuna.Trial, tracking_uri: str) -> None:
    """Set the trial's ``cost.device_seconds`` from its MLflow run's last value, before Optuna is
    told the outcome (a torchrun trial reports no epoch to this process; the final value covers
    the whole run); a failure only warns."""
    from harness.tracking import mlflow_client

    try:
        run_id = stored_trial(trial).user_attrs.get(ATTR_RUN)
        if not run_id:
            return
        value = mlflow_client(tracking_uri).get_run(run_id).data.metrics.get(ATTR_DEVICE_SECONDS)
        if value is not None:
            set_trial_attr(trial, ATTR_DEVICE_SECONDS, round(float(value), 3))
    except Exception as exc:
        log.warning("could not record the cost of trial %s: %s", trial.number, redact(str(exc)))


def _run_trial(
    study: optuna.Study,
    spec: StudySpec,
    trial: optuna.Trial,
    *,
    storage_url: str,
    tracking_uri: str,
    parent_run_id: str,
    gpus_per_trial: int,
    quiet: bool,
) -> TrialState:
    """Run one trial in this process (or as a torchrun job) under a heartbeat; tell Optuna the outcome
    (WAITING: stopped by a signal and re-queued)."""
    from harness.train import pretrain

    frozen = stored_trial(trial)  # re-queued by a stopped worker (not a dead one's retry): its run goes on
    continuing = was_preempted(frozen) and retry_of(frozen) is None
    point = trial_point(spec, trial)
    set_trial_attr(trial, ATTR_KEY, point.key)
    set_trial_attr(trial, ATTR_POINT, dump_point(point.overrides))
    set_trial_attr(trial, ATTR_SEED, point.seed)
    previous_number = retry_of(stored_trial(trial))
    if (
        previous_number is None
    ):  # re-queued by a re-run after a failure (a tracking server that was down, say)
        previous_number = _last_failed_attempt(study, point.key, trial.number)
    experiment = spec.experiment(point.overrides, point.seed)
    experiment.runtime.experiment = spec.name
    output = Path(experiment.runtime.output_dir) / spec.name / point.key
    label = ", ".join(f"{k}={v}" for k, v in point.label().items())
    run_name = trial_run_name(spec.name, trial.number, point.label())
    tags = {"study": spec.name, "trial": str(trial.number), "seed": str(point.seed), "rho.key": point.key}
    tags.update({f"swept.{k}": str(v) for k, v in point.label().items()})
    if previous_number is not None:
        previous = trial_by_number(study, previous_number)
        tags["retry_of_trial"] = str(previous_number)
        if previous.user_attrs.get(ATTR_RUN):
            tags["retry_of_run"] = previous.user_attrs[ATTR_RUN]
            _close_dead_run(tracking_uri, previous.user_attrs[ATTR_RUN])
    if not quiet:
        resumed = " (resuming)" if (output / "last.pt").is_file() else ""
        resumed += " after a stop signal" if continuing else ""
        print(f"\n== trial {trial.number} of study {spec.name}: {label}{resumed}", flush=True)

    pruner_report = (
        pruning_callback(trial, spec.pruner_metric, spec.pruner_direction, experiment.optim.epochs)
        if spec.pruner != "none"
        else None
    )

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        """The trial's cost so far (for ``limits.device_hours``), then the pruner's verdict."""
        if ATTR_DEVICE_SECONDS in metrics:
            set_trial_attr(trial, ATTR_DEVICE_SECONDS, round(float(metrics[ATTR_DEVICE_SECONDS]), 3))
        if pruner_report is not None:
            pruner_report(epoch, metrics)

    started = time.monotonic()

    def remember_run(run_id: str) -> None:
        set_trial_attr(trial, ATTR_RUN, run_id)

    preempted = None
    with Heartbeat(trial, spec.limits["heartbeat_interval"] or 1):
        try:
            try:
                if gpus_per_trial > 1:
                    metrics = run_torchrun(
                        spec,
                        trial,
                        experiment,
                        output,
                        gpus=gpus_per_trial,
                        tracking_uri=tracking_uri,
                        storage_url=storage_url,
                        parent_run_id=parent_run_id,
                        tags=tags,
                        run_name=run_name,
                        on_run_start=remember_run,
                        new_run=not continuing,
                    )
                else:
                    result = pretrain(
                        experiment,
                        resume=True,
                        resume_run=continuing,
                        output=output,
                        run_name=run_name,
                        tracking_uri=tracking_uri,
                        parent_run_id=parent_run_id,
                        tags=tags,
                        on_epoch_end=report_epoch,
                        on_run_start=remember_run,
                        print_progress=not quiet,
                    )
                    metrics = result.metrics
            finally:  # before the trial is told its outcome (then its attributes are frozen)
                _record_cost(trial, tracking_uri)
        except Preempted as exc:
            preempted = exc
        except optuna.TrialPruned as exc:
            set_trial_attr(trial, ATTR_REASON, str(exc))
            _mark_pruned_run(trial, tracking_uri, str(exc))
            study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number} pruned: {exc}", flush=True)
            return TrialState.PRUNED
        except EnvironmentFailure as exc:  # the machine, not the trial: record it and stop this worker
            reason = redact(f"{exc.__class__.__name__}: {exc}")[:2000]
            try:  # the storage may be on the same full disk, or down
                set_trial_attr(trial, ATTR_REASON, reason)
                study.tell(trial, state=TrialState.FAIL)
            except Exception as storage_exc:
                log.warning(
                    "could not record the failure of trial %s: %s", trial.number, redact(str(storage_exc))
                )
            print(f"trial {trial.number} FAILED: {reason}; stopping this worker", flush=True)
            raise
        except KeyboardInterrupt:
            set_trial_attr(trial, ATTR_REASON, "interrupted (Ctrl-C); re-run to resume")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:
            reason = redact(f"{exc.__class__.__name__}: {exc}")[:2000]
            set_trial_attr(trial, ATTR_REASON, reason)
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} FAILED: {reason}", flush=True)
            log.debug("trial failure", exc_info=True)
            return TrialState.FAIL
    if preempted is not None:  # the heartbeat has stopped: back in the queue, not failed
        note = redact(str(preempted))[:2000]
        try:
            requeue_trial(trial, note)
        except Exception as exc:  # it stays RUNNING without a heartbeat: failed and retried once stale
            log.warning("could not put trial %s back in the queue: %s", trial.number, redact(str(exc)))
        print(f"trial {trial.number} stopped and re-queued: {note}", flush=True)
        return TrialState.WAITING
    duration = time.monotonic() - started
    for key, value in metrics.items():
        set_trial_attr(trial, f"{ATTR_METRIC_PREFIX}{key}", float(value))
    set_trial_attr(trial, ATTR_DURATION, round(duration, 1))
    if spec.objective_metric not in metrics:
        reason = f"objective metric {spec.objective_metric!r} was not produced; got {sorted(metrics)}"
        set_trial_attr(trial, ATTR_REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} FAILED: {reason}", flush=True)
        return TrialState.FAIL
    study.tell(trial, float(metrics[spec.objective_metric]))
    return TrialState.COMPLETE


def _mark_pruned_run(trial: optuna.Trial, tracking_uri: str, message: str) -> None:
    """A pruned trial's MLflow run: KILLED (reports show FINISHED runs only) with the tags ``pruned``
    (why) and ``pruned_at_epoch`` (the last epoch it trained, also the trial's user attribute),
    instead of the FAILED with a ``failure_reason`` the training left; its checkpoint stays where
    it was written (``last.pt`` of that epoch). A failure here only warns."""
    from harness.tracking import mlflow_client

    try:
        attrs = stored_trial(trial).user_attrs
        epoch = attrs.get(ATTR_PRUNED_AT)
        if epoch is None:  # a torchrun job whose rank 0 could not write it: the last reported epoch
            epoch = max(stored_trial(trial).intermediate_values, default=0)
            set_trial_attr(trial, ATTR_PRUNED_AT, epoch)
        run_id = attrs.get(ATTR_RUN)
        if not run_id:
            return
        client = mlflow_client(tracking_uri)
        client.set_tag(run_id, "pruned", message[:5000])
        client.set_tag(run_id, ATTR_PRUNED_AT, str(epoch))
        if "failure_reason" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "failure_reason")
        client.set_terminated(run_id, "KILLED")
    except Exception as exc:
        log.warning("could not mark the run of pruned trial %s: %s", trial.number, redact(str(exc)))


def _last_failed_attempt(study: optuna.Study, key: str, number: int) -> int | None:
    """The number of the latest failed earlier trial of the same point, if any."""
    failed = queries.trials_with_attr(study, ATTR_KEY, key, (TrialState.FAIL,))
    return max((other for _, other in failed if other < number), default=None)


def _close_dead_run(tracking_uri: str, run_id: str) -> None:
    """Mark the MLflow run of a dead attempt FAILED (its process could not)."""
    from harness.tracking import mlflow_client

    client = mlflow_client(tracking_uri)
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            reason = (
                "the attempt ended without closing its run (worker died or lost the tracking store); retried"
            )
            client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(run_id, "FAILED")
    except Exception as exc:
        log.warning("could not close the dead run %s: %s", run_id, redact(str(exc)))
