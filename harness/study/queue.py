"""A study's trial queue: grid points enqueued once, the next trial a worker takes (a waiting one,
or a sampled one while the search budget lasts) with the races between workers resolved, and the
point each trial runs.

A point that has a complete, pruned, waiting or running trial is not enqueued again, and a worker
that pops a point already taken by another (the rare race of two machines enqueuing at once)
drops it, so no point runs twice.

Each of these decisions reads what it needs from the storage (``harness.study.queries``: the keys
taken, whether a trial waits, the trials of one key), not every trial of the study, so that
queuing and taking a trial cost the same with 100 stored trials or 100k.
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.runtime import stop_requested
from harness.study import queries
from harness.study.attrs import ATTR_DUPLICATE, ATTR_KEY, ATTR_POINT, ATTR_SAMPLED, ATTR_SEED, ATTR_SURPLUS
from harness.study.backend import (
    fail_dead_trials,
    set_trial_attr,
    stored_trial,
    take_trial,
    trial_id,
    was_enqueued,
)
from harness.study.spec import Point, SearchParam, StudySpec, dump_point

TAKEN_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def enqueue_points(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue every point × seed that has no complete, pruned, waiting or running trial; returns how many.
    The keys taken are read as one column (distinct values), not as the trials that hold them."""
    taken = queries.attr_values(study, ATTR_KEY, TAKEN_STATES)
    added = 0
    for point in spec.points():
        if point.key in taken:
            continue
        study.enqueue_trial(
            _fixed_params(point),
            user_attrs={ATTR_KEY: point.key, ATTR_POINT: dump_point(point.overrides), ATTR_SEED: point.seed},
        )
        added += 1
    return added


def _fixed_params(point: Point) -> dict[str, Any]:
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


def next_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """A waiting trial, or a newly sampled one while the search budget lasts; None when there is no work."""
    while True:
        waiting = queries.has_trials(study, (TrialState.WAITING,))
        budget_left = spec.n_trials > 0 and _sampled_count(study) < spec.n_trials
        if not waiting and not budget_left:
            return None
        trial = take_trial(study)
        frozen = stored_trial(trial)
        if not was_enqueued(frozen) and ATTR_SAMPLED not in frozen.user_attrs:
            if not budget_left:  # another worker took the last waiting trial between our look and our ask
                set_trial_attr(trial, ATTR_SURPLUS, True)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            set_trial_attr(trial, ATTR_SAMPLED, True)
        key = frozen.user_attrs.get(ATTR_KEY)
        if key is not None and _taken_elsewhere(study, key, trial_id(trial)):
            set_trial_attr(trial, ATTR_DUPLICATE, True)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        return trial


def _sampled_count(study: optuna.Study) -> int:
    """Search trials so far: a retried attempt counts with its original (same key). Only the
    sampled trials' flags and keys are read."""
    flags = (ATTR_SAMPLED, ATTR_SURPLUS, ATTR_DUPLICATE, ATTR_KEY)
    keys = set()
    for number, attrs in queries.attrs_of_trials_with(study, ATTR_SAMPLED, flags).items():
        if attrs.get(ATTR_SAMPLED) and not attrs.get(ATTR_SURPLUS) and not attrs.get(ATTR_DUPLICATE):
            keys.add(attrs.get(ATTR_KEY, f"trial-{number}"))
    return len(keys)


def _taken_elsewhere(study: optuna.Study, key: str, own_id: int) -> bool:
    states = (TrialState.COMPLETE, TrialState.RUNNING)
    return any(other != own_id for other, _ in queries.trials_with_attr(study, ATTR_KEY, key, states))


def wait_for_stale(study: optuna.Study, spec: StudySpec) -> bool:
    """With no work left but trials still RUNNING, wait out one grace period so that a dead
    worker's trial can be declared stale and re-queued; True if there is work again (False at once
    on a stop signal)."""
    if not queries.has_trials(study, (TrialState.RUNNING,)):
        return False
    deadline = time.monotonic() + spec.limits["grace_period"] + spec.limits["heartbeat_interval"] + 1
    while time.monotonic() < deadline:
        time.sleep(min(2.0, spec.limits["heartbeat_interval"] or 1))
        if stop_requested():
            return False
        fail_dead_trials(study)
        if queries.has_trials(study, (TrialState.WAITING,)):
            return True
        if not queries.has_trials(study, (TrialState.RUNNING,)):
            return False
    return False


def trial_point(spec: StudySpec, trial: optuna.Trial) -> Point:
    """The point a trial runs: its queued (or retried) overrides, or grid values and search values
    drawn by the sampler; and its seed. Swept values are recorded as Optuna params too."""
    frozen = stored_trial(trial)
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


def _suggest(trial: optuna.Trial, param: SearchParam) -> Any:
    if param.type == "categorical":
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.type == "int":
        return trial.suggest_int(
            param.key, int(param.low), int(param.high), step=int(param.step or 1), log=param.log
        )
    return trial.suggest_float(param.key, param.low, param.high, log=param.log, step=param.step)
