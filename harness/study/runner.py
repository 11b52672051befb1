"""Run a study: Optuna trials on an RDB storage, each trial a pretraining in an MLflow child run.

A worker (``run_worker``) loops: fail stale trials (a dead worker's trial is marked failed
and re-queued by ``RetryHeartbeatStaleTrialCallback``), take the next waiting trial — or ask
the sampler for a new one while the search budget lasts — and run it with a heartbeat
thread. A trial's checkpoint folder is a function of its point and seed, so a re-queued
trial resumes where the dead one stopped. Grid points are enqueued by whoever runs
``rho study run`` (a point that has a complete, pruned, waiting or running trial is not
enqueued again), and a worker that pops a point already taken by another (the rare race of
two machines enqueuing at once) drops it, so no point runs twice.

Layout: Optuna study ``<name>`` (user attrs: the MLflow parent run id), MLflow experiment
``<name>`` with one parent run and one child run per trial; checkpoints under
``runtime.output_dir/<name>/<point key>``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from harness.config import ConfigError
from harness.errors import EnvironmentFailure
from harness.preflight import check_store
from harness.redact import redact
from harness.study.spec import Point, StudySpec, dump_point
from harness.study.storage import ReconnectingRDBStorage
from harness.tracking import RunLogger, resolve_tracking_uri

log = logging.getLogger(__name__)
# We drive heartbeats ourselves (ask/tell with a heartbeat thread), which Optuna warns about.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
ATTR_KEY, ATTR_POINT, ATTR_SEED = "rho.key", "rho.point", "rho.seed"
ATTR_RUN, ATTR_REASON, ATTR_PARENT = "mlflow_run_id", "failure_reason", "mlflow_parent_run_id"
ATTR_SAMPLED, ATTR_SURPLUS, ATTR_DUPLICATE = "rho.sampled", "rho.surplus", "rho.duplicate"
ATTR_FINGERPRINT = "rho.fingerprint"
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def resolve_storage(url: str | None) -> str:
    """``--storage``, else ``$RHO_STORAGE``, else the embedded sqlite file under ./mlruns."""
    url = url or os.environ.get("RHO_STORAGE")
    if url:
        return url
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
        pruner=make_pruner(**_pruner_settings(spec)),
        direction=spec.direction,
        load_if_exists=True,
    )


def _pruner_settings(spec: StudySpec) -> dict[str, Any]:
    epochs = int(spec.base.get("optim", {}).get("epochs", 10))
    return {"kind": spec.pruner, "warmup": spec.pruner_warmup, "epochs": epochs}


def make_pruner(kind: str, warmup: int, epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a spec's ``pruner`` (``none``, ``median``, ``hyperband``)."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=epochs)
    return optuna.pruners.NopPruner()


def pruning_callback(trial: optuna.Trial, metric: str) -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch_end`` that reports ``metric`` to Optuna and raises TrialPruned when the pruner says so."""

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if metric in metrics:
            trial.report(metrics[metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric}={metrics[metric]:.4g}")

    return report_epoch


TRIAL_ENV = "RHO_TRIAL"


def torchrun_pruning_callback() -> Callable[[int, dict[str, float]], None] | None:
    """In a torchrun trial's rank 0: the pruning callback of the trial named by ``$RHO_TRIAL``.

    The worker that starts the job puts the study, the trial and its pruner there (and the
    storage URL in ``$RHO_STORAGE``), so that rank 0 reports each epoch to Optuna itself and all
    ranks stop together when the trial is pruned; None outside such a job or without a pruner.
    """
    raw = os.environ.get(TRIAL_ENV)
    if not raw:
        return None
    settings = json.loads(raw)
    if settings["pruner"]["kind"] == "none":
        return None
    state: dict[str, Callable] = {}

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if "callback" not in state:  # connect on the first report, on rank 0 only
            study = optuna.load_study(
                study_name=settings["study"],
                storage=make_storage(os.environ["RHO_STORAGE"]),
                pruner=make_pruner(**settings["pruner"]),
            )
            trial = optuna.trial.Trial(study, settings["trial_id"])
            state["callback"] = pruning_callback(trial, settings["metric"])
        state["callback"](epoch, metrics)

    return report_epoch


def enqueue_points(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue every point × seed that has no complete, pruned, waiting or running trial; returns how many."""
    taken = {t.user_attrs.get(ATTR_KEY) for t in study.get_trials(deepcopy=False, states=TAKEN_STATES)}
    added = 0
    for point in spec.points():
        if point.key in taken:
            continue
        study.enqueue_trial(
            _fixed_params(spec, point),
            user_attrs={ATTR_KEY: point.key, ATTR_POINT: dump_point(point.overrides), ATTR_SEED: point.seed},
        )
        added += 1
    return added


def _fixed_params(spec: StudySpec, point: Point) -> dict[str, Any]:
    """Optuna params of a point: every swept key (JSON-encoded where not a plain value) and the seed."""
    return {key: _encode(value) for key, value in point.overrides.items()} | {"seed": point.seed}


def _encode(value: Any) -> Any:
    return (
        value
        if isinstance(value, (int, float, str, bool)) or value is None
        else json.dumps(value, sort_keys=True)
    )


def _categorical_choices(spec: StudySpec) -> tuple[dict[str, list], dict[str, dict]]:
    """Every value each swept key takes across grid and baselines (one distribution per key),
    encoded for Optuna, and the map back from encoded to original values."""
    choices: dict[str, list] = {}
    originals: dict[str, dict] = {}
    for point in spec.points():
        for key, value in point.overrides.items():
            encoded = _encode(value)
            if encoded not in choices.setdefault(key, []):
                choices[key].append(encoded)
                originals.setdefault(key, {})[encoded] = value
    choices["seed"] = list(spec.seeds)
    return choices, originals


def ensure_parent_run(study: optuna.Study, spec: StudySpec, tracking_uri: str) -> str:
    """The study's MLflow parent run, created once and remembered in the study's user attrs."""
    existing = study.user_attrs.get(ATTR_PARENT)
    if existing:
        return existing
    parent = RunLogger(
        tracking_uri,
        spec.name,
        run_name=spec.name,
        tags={"rho.role": "study", "study": spec.name, "mlflow.note.content": spec.description},
        system_metrics=False,
    )
    parent.log_params(
        {
            "grid": json.dumps(spec.grid, default=str)[:6000],
            "seeds": spec.seeds,
            "objective": spec.objective_metric,
            "direction": spec.direction,
            "pruner": spec.pruner,
        }
    )
    study.set_user_attr(ATTR_PARENT, parent.run_id)
    winner = optuna.load_study(study_name=spec.name, storage=study._storage).user_attrs.get(ATTR_PARENT)
    if winner != parent.run_id:  # another machine created one at the same moment: use theirs
        parent.client.delete_run(parent.run_id)
        return winner
    return parent.run_id


def prepare_study(
    spec: StudySpec,
    storage_url: str,
    tracking_uri: str,
    extra: dict[str, Any] | None = None,
    strict: bool = False,
) -> tuple[int, str]:
    """Create or load the study, queue its missing points and make sure its MLflow parent run
    exists; returns (points newly queued, parent run id).

    Raises:
        StudyChangedError: the study exists from another spec (``StudySpec.fingerprint`` with
            ``extra``): resuming it would mix their results with this spec's. With ``strict``, a
            study with trials but no fingerprint (begun before fingerprints) counts as changed.
    """
    study = open_study(spec, make_storage(storage_url, spec))
    check_fingerprint(study, spec, storage_url, extra, strict)
    added = enqueue_points(study, spec)
    return added, ensure_parent_run(study, spec, tracking_uri)


class StudyChangedError(ConfigError):
    """The study exists from another spec (``check_fingerprint``)."""


def check_fingerprint(
    study: optuna.Study,
    spec: StudySpec,
    storage_url: str,
    extra: dict[str, Any] | None = None,
    strict: bool = False,
) -> None:
    """Remember the spec's fingerprint on the study, or refuse a spec that changed since."""
    current, stored = spec.fingerprint(extra), study.user_attrs.get(ATTR_FINGERPRINT)
    if stored is None and strict and study.get_trials(deepcopy=False):
        stored = "none"
    if stored is None:
        study.set_user_attr(ATTR_FINGERPRINT, current)
    elif stored != current:
        raise StudyChangedError(
            "name",
            spec.name,
            f"study {spec.name!r} in {redact(storage_url)} was created from another spec (base config, "
            f"per_method, grid, baselines, seeds or search space; fingerprint {stored}, this spec "
            f"{current}), so it cannot resume with this one. "
            f"Give this spec a new name to keep both, or start it over: rho study delete {spec.path or spec.name}",
            source=str(spec.path) if spec.path else None,
        )


def delete_study(spec: StudySpec, storage_url: str) -> tuple[int, list[Path]]:
    """Delete the spec's Optuna study and its trials' checkpoint folders; its MLflow runs stay.

    Returns (trials deleted, checkpoint folders removed).
    """
    try:
        study = optuna.load_study(study_name=spec.name, storage=make_storage(storage_url))
    except KeyError:
        trials = 0
    else:
        trials = len(study.get_trials(deepcopy=False))
        optuna.delete_study(study_name=spec.name, storage=study._storage)
    points = [(point.overrides, point.seed) for point in spec.points()] + [({}, spec.seeds[0])]
    folders = {
        Path(spec.experiment(overrides, seed, check_files=False).runtime.output_dir) / spec.name
        for overrides, seed in points
    }
    removed = sorted(folder for folder in folders if folder.is_dir())
    for folder in removed:
        shutil.rmtree(folder)
    return trials, removed


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
    pruned: int = 0


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds from a daemon thread."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a storage hiccup: the next beat tries again
                log.warning("heartbeat of trial %s failed: %s", self.trial_id, redact(str(exc)))

    def __enter__(self) -> _Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
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
    """Take and run trials of ``spec`` until none is left (or a limit is reached)."""
    storage = make_storage(storage_url, spec)
    study = open_study(spec, storage)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    check_store(tracking_uri, "MLflow store")
    parent_run_id = ensure_parent_run(study, spec, tracking_uri)
    report = WorkerReport()
    started = time.monotonic()
    timeout, max_failures = spec.limits["timeout"], spec.limits["max_failures"]
    while True:
        if timeout is not None and time.monotonic() - started > timeout:
            print(f"study {spec.name}: timeout of {timeout} s reached; not starting more trials", flush=True)
            break
        if max_failures is not None and _count(study, TrialState.FAIL) >= max_failures:
            print(
                f"study {spec.name}: {max_failures} failed trials; stopping (limits.max_failures)", flush=True
            )
            break
        fail_stale_trials(study)
        trial = _next_trial(study, spec)
        if trial is None:
            if _wait_for_stale(study, spec):
                continue
            break
        state = _run_trial(study, storage, spec, trial, tracking_uri, parent_run_id, gpus_per_trial, quiet)
        report.completed += state == TrialState.COMPLETE
        report.failed += state == TrialState.FAIL
        report.pruned += state == TrialState.PRUNED
    return report


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def _next_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """A waiting trial, or a newly sampled one while the search budget lasts; None when there is no work."""
    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        budget_left = _sampled_count(study) < spec.n_trials
        if not waiting and not budget_left:
            return None
        trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)
        if "fixed_params" not in frozen.system_attrs and ATTR_SAMPLED not in frozen.user_attrs:
            if not budget_left:  # another worker took the last waiting trial between our look and our ask
                study._storage.set_trial_user_attr(trial._trial_id, ATTR_SURPLUS, True)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            study._storage.set_trial_user_attr(trial._trial_id, ATTR_SAMPLED, True)
        key = frozen.user_attrs.get(ATTR_KEY)
        if key is not None and _taken_elsewhere(study, key, trial._trial_id):
            study._storage.set_trial_user_attr(trial._trial_id, ATTR_DUPLICATE, True)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        return trial


def _sampled_count(study: optuna.Study) -> int:
    """Search trials so far: a retried attempt counts with its original (same key)."""
    keys = set()
    for t in study.get_trials(deepcopy=False):
        if (
            t.user_attrs.get(ATTR_SAMPLED)
            and not t.user_attrs.get(ATTR_SURPLUS)
            and not t.user_attrs.get(ATTR_DUPLICATE)
        ):
            keys.add(t.user_attrs.get(ATTR_KEY, f"trial-{t.number}"))
    return len(keys)


def _taken_elsewhere(study: optuna.Study, key: str, trial_id: int) -> bool:
    return any(
        t.user_attrs.get(ATTR_KEY) == key and t._trial_id != trial_id
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    )


def _wait_for_stale(study: optuna.Study, spec: StudySpec) -> bool:
    """With no work left but trials still RUNNING, wait out one grace period so that a dead
    worker's trial can be declared stale and re-queued; True if there is work again."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return False
    deadline = time.monotonic() + spec.limits["grace_period"] + spec.limits["heartbeat_interval"] + 1
    while time.monotonic() < deadline:
        time.sleep(min(2.0, spec.limits["heartbeat_interval"] or 1))
        fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
    return False


def _trial_point(spec: StudySpec, trial: optuna.Trial) -> Point:
    """The point a trial runs: its queued (or retried) overrides, or grid values and search values
    drawn by the sampler; and its seed. Swept values are recorded as Optuna params too."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    choices, originals = _categorical_choices(spec)
    if ATTR_POINT in frozen.user_attrs:
        overrides = json.loads(frozen.user_attrs[ATTR_POINT])
        for key in overrides:
            if key in choices and key not in frozen.params:
                trial.suggest_categorical(key, choices[key])
        seed = int(frozen.user_attrs[ATTR_SEED])
        if "seed" not in frozen.params:
            trial.suggest_categorical("seed", choices["seed"])
        return Point(overrides, seed)
    overrides = {key: originals[key][trial.suggest_categorical(key, choices[key])] for key in spec.grid}
    for param in spec.search:
        overrides[param.key] = _suggest(trial, param)
    return Point(overrides, int(trial.suggest_categorical("seed", choices["seed"])))


def _suggest(trial: optuna.Trial, param) -> Any:
    if param.type == "categorical":
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.type == "int":
        return trial.suggest_int(
            param.key, int(param.low), int(param.high), step=int(param.step or 1), log=param.log
        )
    return trial.suggest_float(param.key, param.low, param.high, log=param.log, step=param.step)


def _run_trial(study, storage, spec, trial, tracking_uri, parent_run_id, gpus_per_trial, quiet) -> TrialState:
    """Run one trial in this process (or as a torchrun job) under a heartbeat; tell Optuna the outcome."""
    from harness.train import pretrain

    point = _trial_point(spec, trial)
    storage.set_trial_user_attr(trial._trial_id, ATTR_KEY, point.key)
    storage.set_trial_user_attr(trial._trial_id, ATTR_POINT, dump_point(point.overrides))
    storage.set_trial_user_attr(trial._trial_id, ATTR_SEED, point.seed)
    frozen = storage.get_trial(trial._trial_id)
    retry_of = frozen.system_attrs.get("failed_trial")
    if retry_of is None:  # re-queued by a re-run after a failure (a tracking server that was down, say)
        retry_of = _last_failed_attempt(study, point.key, trial.number)
    experiment = spec.experiment(point.overrides, point.seed)
    experiment.runtime.experiment = spec.name
    output = Path(experiment.runtime.output_dir) / spec.name / point.key
    label = ", ".join(f"{k}={v}" for k, v in point.label().items())
    tags = {"study": spec.name, "trial": str(trial.number), "seed": str(point.seed), "rho.key": point.key}
    tags.update({f"swept.{k}": str(v) for k, v in point.label().items()})
    if retry_of is not None:
        previous = study.trials[retry_of]
        tags["retry_of_trial"] = str(retry_of)
        if previous.user_attrs.get(ATTR_RUN):
            tags["retry_of_run"] = previous.user_attrs[ATTR_RUN]
            _close_dead_run(tracking_uri, previous.user_attrs[ATTR_RUN])
    if not quiet:
        resumed = " (resuming)" if (output / "last.pt").is_file() else ""
        print(f"\n== trial {trial.number} of study {spec.name}: {label}{resumed}", flush=True)

    report_epoch = pruning_callback(trial, spec.pruner_metric) if spec.pruner != "none" else None
    started = time.monotonic()
    run_started = {}

    def remember_run(run_id: str) -> None:
        run_started["id"] = run_id
        storage.set_trial_user_attr(trial._trial_id, ATTR_RUN, run_id)

    with _Heartbeat(storage, trial._trial_id, spec.limits["heartbeat_interval"] or 1):
        try:
            if gpus_per_trial > 1:
                pruning = {
                    "study": spec.name,
                    "trial_id": trial._trial_id,
                    "metric": spec.pruner_metric,
                    "pruner": _pruner_settings(spec),
                }
                metrics = _run_torchrun(
                    experiment, output, trial, tracking_uri, parent_run_id, tags, gpus_per_trial, remember_run,
                    storage.url, pruning,
                )  # fmt: skip
            else:
                result = pretrain(
                    experiment,
                    resume=True,
                    resume_run=False,
                    output=output,
                    run_name=f"{spec.name}-t{trial.number}",
                    tracking_uri=tracking_uri,
                    parent_run_id=parent_run_id,
                    tags=tags,
                    on_epoch_end=report_epoch,
                    on_run_start=remember_run,
                    print_progress=not quiet,
                )
                metrics = result.metrics
        except optuna.TrialPruned as exc:
            storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, str(exc))
            study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number} pruned: {exc}", flush=True)
            return TrialState.PRUNED
        except EnvironmentFailure as exc:  # the machine, not the trial: record it and stop this worker
            reason = redact(f"{exc.__class__.__name__}: {exc}")[:2000]
            try:  # the storage may be on the same full disk, or down
                storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, reason)
                study.tell(trial, state=TrialState.FAIL)
            except Exception as storage_exc:
                log.warning(
                    "could not record the failure of trial %s: %s", trial.number, redact(str(storage_exc))
                )
            print(f"trial {trial.number} FAILED: {reason}; stopping this worker", flush=True)
            raise
        except KeyboardInterrupt:
            storage.set_trial_user_attr(
                trial._trial_id, ATTR_REASON, "interrupted (Ctrl-C); re-run to resume"
            )
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:
            reason = redact(f"{exc.__class__.__name__}: {exc}")[:2000]
            storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, reason)
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} FAILED: {reason}", flush=True)
            log.debug("trial failure", exc_info=True)
            return TrialState.FAIL
    duration = time.monotonic() - started
    for key, value in metrics.items():
        storage.set_trial_user_attr(trial._trial_id, f"metric.{key}", float(value))
    storage.set_trial_user_attr(trial._trial_id, "duration_s", round(duration, 1))
    if spec.objective_metric not in metrics:
        reason = f"objective metric {spec.objective_metric!r} was not produced; got {sorted(metrics)}"
        storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} FAILED: {reason}", flush=True)
        return TrialState.FAIL
    study.tell(trial, float(metrics[spec.objective_metric]))
    return TrialState.COMPLETE


def _last_failed_attempt(study: optuna.Study, key: str, number: int) -> int | None:
    """The number of the latest failed earlier trial of the same point, if any."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return max(
        (t.number for t in failed if t.user_attrs.get(ATTR_KEY) == key and t.number < number), default=None
    )


def _close_dead_run(tracking_uri: str, run_id: str) -> None:
    """Mark the MLflow run of a dead attempt FAILED (its process could not)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            reason = (
                "the attempt ended without closing its run (worker died or lost the tracking store); retried"
            )
            client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(run_id, "FAILED")
    except Exception as exc:
        log.warning("could not close the dead run %s: %s", run_id, redact(str(exc)))


def _run_torchrun(
    experiment, output, trial, tracking_uri, parent_run_id, tags, gpus, on_run_start, storage_url, pruning
) -> dict[str, float]:
    """Run the trial as a ``torchrun --nproc_per_node=gpus`` job.

    Rank 0 writes its MLflow run id to ``result.json`` as soon as the run exists, and the metrics
    when it ends; ``on_run_start`` gets the run id either way, also when the job fails, so that
    the trial (and a retry of it) links to its run. Rank 0 reports every epoch to the trial in
    the storage itself (``pruning``, passed as ``$RHO_TRIAL``); a pruned job ends with
    ``"pruned"`` in ``result.json``, raised here as ``optuna.TrialPruned``.
    """
    output.mkdir(parents=True, exist_ok=True)
    config = output / "trial_config.yaml"
    # The store URL (it may hold a password) goes to the ranks in their environment, never in
    # argv (which `ps` shows to every user) or in the config file; with the config's own
    # runtime.tracking_uri cleared, $MLFLOW_TRACKING_URI is what the ranks use.
    config.write_text(replace(experiment, runtime=replace(experiment.runtime, tracking_uri=None)).to_yaml())
    result = output / "result.json"
    result.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port: several local workers may each run a torchrun job
        f"--nproc_per_node={gpus}",
        "-m",
        "harness",
        "pretrain",
        str(config),
        "--resume",
        "--new-run",
        "--output",
        str(output),
        "--run-name",
        f"{experiment.runtime.experiment}-t{trial.number}",
        "--parent-run-id",
        parent_run_id,
        "--result-json",
        str(result),
        "--tags",
        json.dumps(tags),
    ]
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, RHO_STORAGE=storage_url)
    env[TRIAL_ENV] = json.dumps(pruning)
    job = subprocess.run(command, env=env)
    payload = json.loads(result.read_text()) if result.is_file() else {}
    if payload.get("run_id"):
        on_run_start(payload["run_id"])
    if job.returncode == 0 and payload.get("pruned"):
        raise optuna.TrialPruned(payload["pruned"])
    if job.returncode != 0:
        raise RuntimeError(
            f"the torchrun job of trial {trial.number} exited with code {job.returncode}; "
            "its ranks' errors are in this worker's output above"
        )
    return payload["metrics"]


def worker_command(
    spec_path: str, storage_url: str, tracking_uri: str | None, gpus_per_trial: int
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one local worker process.

    The storage and tracking URLs travel in the environment (``RHO_STORAGE``,
    ``MLFLOW_TRACKING_URI``), which the worker reads when ``--storage`` and ``--tracking-uri``
    are absent: a PostgreSQL or MLflow server URL may hold a password, and argv is visible to
    every user of the machine (``ps``), the environment only to the process's owner.
    """
    env = dict(os.environ, RHO_STORAGE=storage_url)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [sys.executable, "-m", "harness", "study", "worker", spec_path]
    if gpus_per_trial:
        command += ["--gpus-per-trial", str(gpus_per_trial)]
    return command, env


def run_workers(
    spec_path: str, storage_url: str, tracking_uri: str | None, workers: int, gpus_per_trial: int
) -> int:
    """Start ``workers`` local worker processes on one storage (one GPU each when there are GPUs); wait for them."""
    gpus = _visible_gpus()
    processes = []
    for index in range(workers):
        command, env = worker_command(spec_path, storage_url, tracking_uri, gpus_per_trial)
        if gpus:
            per = max(1, gpus_per_trial)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[(index * per + j) % len(gpus)] for j in range(per))
        processes.append(subprocess.Popen(command, env=env))
    try:
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in processes:
            p.wait()
        raise
    return max(codes, default=0)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
