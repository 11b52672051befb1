"""A study's life: created (or resumed) from its spec, guarded by the spec's fingerprint, given one
MLflow parent run, its points queued; and deleted with its checkpoints.

Layout: Optuna study ``<name>`` (user attrs: the MLflow parent run id, the fingerprint), MLflow
experiment ``<name>`` with one parent run and one child run per trial; checkpoints under
``runtime.output_dir/<name>/<point key>``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna

from harness.config import ConfigError
from harness.redact import redact
from harness.study import queries
from harness.study.attrs import ATTR_FINGERPRINT, ATTR_PARENT
from harness.study.backend import claim_study_attr, delete_from_storage, make_storage, open_study
from harness.study.queue import enqueue_points
from harness.study.spec import StudySpec
from harness.tracking import RunLogger, mlflow_client


def ensure_parent_run(study: optuna.Study, spec: StudySpec, tracking_uri: str) -> str:
    """The study's MLflow parent run, created once and remembered in the study's user attrs.

    Launches of one study that start together (the same ``rho study run`` on every machine) each
    create a candidate run, then elect one with a compare-and-set in the study storage
    (``claim_study_attr``): exactly one candidate is stored, the others delete their runs and use
    it. A study that runs again (new points, failed trials re-queued) has its parent marked
    RUNNING again until ``finish_parent_run``.
    """
    existing = study.user_attrs.get(ATTR_PARENT)
    if existing:
        mlflow_client(tracking_uri).update_run(existing, status="RUNNING")
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
    winner = claim_study_attr(study, ATTR_PARENT, parent.run_id)
    if winner != parent.run_id:  # another launch created one at the same moment: use theirs
        parent.client.delete_run(parent.run_id)
    return winner


def finish_parent_run(study: optuna.Study, tracking_uri: str) -> bool:
    """Mark the study's MLflow parent run FINISHED once no trial is waiting or running; returns
    whether it did. Every worker calls it as it leaves, so the last one out closes the run."""
    parent = study.user_attrs.get(ATTR_PARENT)
    if not parent:
        return False
    open_states = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    if queries.has_trials(study, open_states):  # read afresh: other workers' trials included
        return False
    mlflow_client(tracking_uri).set_terminated(parent, status="FINISHED")
    return True


def prepare_study(
    spec: StudySpec,
    storage_url: str,
    tracking_uri: str,
    extra: dict[str, Any] | None = None,
    strict: bool = False,
) -> tuple[int, str]:
    """Create or load the study, queue its missing points and make sure its MLflow parent run
    exists; returns (points newly queued, parent run id). Its reads are a few queries however many
    trials the study has (``harness.study.queries``).

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
    if stored is None and strict and queries.has_trials(study):
        stored = "none"
    if stored is None:
        study.set_user_attr(ATTR_FINGERPRINT, current)
    elif stored != current:
        raise StudyChangedError(
            "name",
            spec.name,
            f"study {spec.name!r} in {redact(storage_url)} was created from another spec (base config, "
            f"per_method, per_point, grid, baselines, seeds or search space; fingerprint {stored}, this spec "
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
        trials = queries.count_trials(study)
        delete_from_storage(study)
    points = [(point.overrides, point.seed) for point in spec.points()] + [({}, spec.seeds[0])]
    folders = {
        Path(spec.experiment(overrides, seed, check_files=False).runtime.output_dir) / spec.name
        for overrides, seed in points
    }
    removed = sorted(folder for folder in folders if folder.is_dir())
    for folder in removed:
        shutil.rmtree(folder)
    return trials, removed
