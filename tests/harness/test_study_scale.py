"""A study's costs do not grow with its stored trials (issue 26): `rho study status`, `prepare_study`
and a worker taking its next trial run the same SQL statements and build no FrozenTrial per
stored trial, on a real Optuna sqlite storage of N and 4N trials, and give the same results as
the reads of every trial they replace."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState, create_trial

from harness.resources import shipped
from harness.study import queries
from harness.study.attrs import ATTR_DUPLICATE, ATTR_KEY, ATTR_SAMPLED
from harness.study.backend import fail_dead_trials, make_storage, open_study
from harness.study.lifecycle import prepare_study
from harness.study.queue import _sampled_count, next_trial, trial_point
from harness.study.spec import parse_study
from harness.study.worker import _count, _last_failed_attempt

optuna.logging.set_verbosity(optuna.logging.WARNING)
SIZES = (60, 240)  # stored trials N and 4N


def demo_spec(name: str = "scale", n_trials: int = 0):
    """The shipped demo study with a small grid (no file checks)."""
    raw = yaml.safe_load(shipped("studies/demo.yaml").read_text())
    raw["experiment"] = str(shipped("studies/experiments/demo.yaml"))
    raw.pop("baselines", None)
    raw.update(name=name, seeds=[0], grid={"data.clips": [1, 2, 3, 4]})
    if n_trials:
        raw["search"] = {
            "n_trials": n_trials,
            "params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
        }
    return parse_study(raw, None, check_files=False)


def template(key: str, state: TrialState, number_attrs: dict | None = None) -> FrozenTrial:
    """A trial as a worker leaves it: params, fixed params, attributes, final metrics (some of
    them hidden by `rho study status`), an intermediate value per epoch."""
    params = {"data.clips": 1, "seed": 0}
    dists = {"data.clips": CategoricalDistribution([1, 2, 3, 4]), "seed": CategoricalDistribution([0])}
    attrs = {
        ATTR_KEY: key,
        "rho.point": json.dumps({"data.clips": 1}),
        "rho.seed": 0,
        "mlflow_run_id": "f" * 32,
        "duration_s": 12.5,
        "metric.loss": 0.5,
        "metric.clips_per_s": 100.0,
        "metric.epoch_time": 3.0,
        **{f"metric.eval.top{k}": 0.3 for k in (1, 5)},
        **(number_attrs or {}),
    }
    if state == TrialState.FAIL:
        attrs["failure_reason"] = "RuntimeError: boom"
    return create_trial(
        state=state,
        value=0.5 if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        params=params,
        distributions=dists,
        user_attrs=attrs,
        system_attrs={"fixed_params": params},
        intermediate_values={e: 1.0 / (e + 1) for e in range(10)},
    )


def replicate(url: str, study_name: str, total: int) -> None:
    """Grow the study to ``total`` trials by copying the rows Optuna wrote for its trials (every
    trial table; new ids and numbers, a new key each): seconds for thousands of trials, where
    ``study.add_trial`` takes ~60 ms a trial."""
    engine = sqlalchemy.create_engine(url)
    children = [
        models.TrialParamModel,
        models.TrialValueModel,
        models.TrialUserAttributeModel,
        models.TrialSystemAttributeModel,
        models.TrialIntermediateValueModel,
    ]
    with engine.begin() as connection:
        study_id = connection.execute(
            sqlalchemy.select(models.StudyModel.study_id).where(models.StudyModel.study_name == study_name)
        ).scalar_one()
        trial = models.TrialModel.__table__
        originals = [
            dict(r._mapping) for r in connection.execute(trial.select().where(trial.c.study_id == study_id))
        ]
        ids = [t["trial_id"] for t in originals]
        rows = {
            model: [
                dict(r._mapping)
                for r in connection.execute(model.__table__.select().where(model.trial_id.in_(ids)))
            ]
            for model in children
        }
        next_id = (
            connection.execute(sqlalchemy.select(sqlalchemy.func.max(trial.c.trial_id))).scalar_one() + 1
        )
        number = len(originals)
        new_trials, new_children = [], {model: [] for model in children}
        while number < total:
            for original in originals[: total - number]:
                new_id, copy = next_id, number
                new_trials.append({**original, "trial_id": new_id, "number": number})
                for model in children:
                    key = model.__table__.primary_key.columns.keys()[0]
                    for row in rows[model]:
                        if row["trial_id"] != original["trial_id"]:
                            continue
                        row = {k: v for k, v in row.items() if k != key} | {"trial_id": new_id}
                        if model is models.TrialUserAttributeModel and row["key"] == ATTR_KEY:
                            row["value_json"] = json.dumps(f"old{copy:08d}")
                        new_children[model].append(row)
                next_id, number = next_id + 1, number + 1
        connection.execute(trial.insert(), new_trials)
        for model, new in new_children.items():
            if new:
                connection.execute(model.__table__.insert(), new)
    engine.dispose()


def fill(url: str, spec, total: int, live: list[FrozenTrial]) -> optuna.Study:
    """The spec's study with ``total`` trials: old finished ones (every state, a sampled, a surplus
    and a duplicate one among them), copied up to the total, then ``live`` added."""
    study = open_study(spec, make_storage(url, spec))
    study.add_trials(
        [
            template("old-a", TrialState.COMPLETE),
            template("old-b", TrialState.FAIL),
            template("old-c", TrialState.PRUNED),
            template("old-d", TrialState.COMPLETE, {ATTR_SAMPLED: True}),
            template("old-e", TrialState.PRUNED, {"rho.surplus": True}),
            template("old-f", TrialState.PRUNED, {ATTR_SAMPLED: True, ATTR_DUPLICATE: True}),
        ]
    )
    replicate(url, spec.name, total - len(live))
    study.add_trials(live)
    return study


@contextlib.contextmanager
def costs(url: str) -> Iterator[dict[str, int]]:
    """SQL statements on the Optuna database ``url`` and FrozenTrials built, while the block runs."""
    counted = {"statements": 0, "frozen": 0}
    database = sqlalchemy.engine.make_url(url).database

    def statement(conn, *args) -> None:
        counted["statements"] += conn.engine.url.database == database

    init = FrozenTrial.__init__

    def frozen(self, *args, **kwargs) -> None:
        counted["frozen"] += 1
        init(self, *args, **kwargs)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
    FrozenTrial.__init__ = frozen
    try:
        yield counted
    finally:
        FrozenTrial.__init__ = init
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", statement)


def real(trial: FrozenTrial) -> bool:
    return not trial.user_attrs.get("rho.surplus") and not trial.user_attrs.get(ATTR_DUPLICATE)


def status_text(name: str, url: str) -> str:
    from harness.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", "status", name, "--storage", url]) == 0
    return out.getvalue()


def test_study_status_costs_the_same_statements_and_prints_the_same_table(tmp_path, monkeypatch):
    """`rho study status` reads three columns' worth of queries whatever the trials stored, builds
    no FrozenTrial, and prints exactly what the read of every trial printed."""
    spec = demo_spec()
    measured = []
    for size in SIZES:
        url = f"sqlite:///{tmp_path / f'status{size}.db'}"
        fill(url, spec, size, [template("live", TrialState.RUNNING)])
        with costs(url) as cost:
            text = status_text(spec.name, url)
        measured.append(cost)
        shown = [t for t in optuna.load_study(study_name=spec.name, storage=url).trials if real(t)]
        assert len(text.splitlines()) == 1 + len(shown), "a row per trial, surplus and duplicates out"
        assert "eval." not in text and "clips_per_s" not in text and "loss" in text
        with monkeypatch.context() as patch:  # what it printed before: trials_frame over FrozenTrials
            patch.setattr(queries, "stored_trials", lambda study, skip_attrs=(): study)
            assert status_text(spec.name, url) == text
    assert measured[0] == measured[1], measured
    assert measured[1]["frozen"] == 0, measured


def test_prepare_study_queues_the_same_points_in_the_same_statements(tmp_path, mlflow_uri):
    """`prepare_study` reads the keys taken as one column: the points queued are those without a
    complete, pruned, waiting or running trial, in as many statements and FrozenTrials for N as for
    4N stored trials."""
    spec = demo_spec()
    keys = [point.key for point in spec.points()]  # data.clips 1..4
    measured = []
    for size in SIZES:
        url = f"sqlite:///{tmp_path / f'prepare{size}.db'}"
        live = [
            template(keys[0], TrialState.COMPLETE),
            template(keys[1], TrialState.FAIL),  # failed: queued again
            template(keys[2], TrialState.WAITING),
        ]
        study = fill(url, spec, size, live)
        with costs(url) as cost:
            added, _ = prepare_study(spec, url, mlflow_uri)
        measured.append(cost)
        assert added == 2
        waiting = queries.attr_values(study, ATTR_KEY, (TrialState.WAITING,))
        assert waiting == {keys[1], keys[2], keys[3]}
        assert prepare_study(spec, url, mlflow_uri)[0] == 0, "a second launch queues nothing"
    assert measured[0] == measured[1], measured
    assert measured[1]["frozen"] <= 4, measured  # the two trials queued, not the trials stored


def test_a_new_worker_takes_its_trials_in_the_same_statements(tmp_path):
    """A new worker's start (fail dead trials, count failures, take the next trial, read its point
    and earlier attempts) costs the same statements and builds FrozenTrials only for the trials it
    takes, at N and 4N stored trials; it takes waiting trials in number order, drops a point
    another trial has taken, and samples while the search budget lasts."""
    spec = demo_spec(n_trials=10_000)
    keys = [point.key for point in spec.points()]
    measured = []
    for size in SIZES:
        url = f"sqlite:///{tmp_path / f'worker{size}.db'}"
        live = [
            template(keys[0], TrialState.FAIL),
            template(keys[0], TrialState.WAITING),  # its retry
            template(keys[1], TrialState.COMPLETE),
            template(keys[1], TrialState.WAITING),  # queued twice by a race: dropped
            template(keys[2], TrialState.WAITING),
        ]
        stored = fill(url, spec, size, live).get_trials(deepcopy=False)
        failed = len([t for t in stored if t.state == TrialState.FAIL])
        searched = {t.user_attrs[ATTR_KEY] for t in stored if real(t) and t.user_attrs.get(ATTR_SAMPLED)}
        with costs(url) as cost:
            study = open_study(spec, make_storage(url, spec))
            assert fail_dead_trials(study) == [] and _count(study, TrialState.FAIL) == failed
            first = next_trial(study, spec)
            assert first.number == size - 4 and trial_point(spec, first).key == keys[0]
            assert _last_failed_attempt(study, keys[0], first.number) == size - 5
            study.tell(first, 1.0)
            second = next_trial(study, spec)
            assert second.number == size - 1, "the duplicate of a finished point was dropped"
            assert study._storage.get_trial(second._trial_id - 1).user_attrs.get(ATTR_DUPLICATE)
            study.tell(second, 1.0)
        measured.append(cost)
        assert _sampled_count(study) == len(searched) > 0  # duplicates not counted
        sampled = next_trial(study, spec)
        assert sampled is not None and sampled.number == size
        assert study._storage.get_trial(sampled._trial_id).user_attrs.get(ATTR_SAMPLED)
    assert measured[0] == measured[1], measured
    assert measured[1]["frozen"] < 30, measured  # the trials taken, never the trials stored


@pytest.mark.parametrize("states", [None, (TrialState.WAITING,), (TrialState.COMPLETE, TrialState.FAIL)])
def test_queries_agree_with_optunas_reads(tmp_path, states):
    """Counts, existence and attribute values read by SQL equal what Optuna's FrozenTrials say."""
    spec = demo_spec()
    url = f"sqlite:///{tmp_path / 'agree.db'}"
    study = fill(url, spec, 30, [template("w", TrialState.WAITING), template("r", TrialState.RUNNING)])
    trials = study.get_trials(deepcopy=False, states=states)
    assert queries.count_trials(study, states) == len(trials)
    assert queries.has_trials(study, states) == bool(trials)
    assert queries.attr_values(study, ATTR_KEY, states) == {t.user_attrs[ATTR_KEY] for t in trials}
    assert queries.trials_with_attr(study, ATTR_KEY, "old-a", states) == [
        (t._trial_id, t.number) for t in trials if t.user_attrs[ATTR_KEY] == "old-a"
    ]
    rows = queries.stored_trials(study).get_trials(states=states)
    assert [(r.number, r.state, r.values, list(r.user_attrs.items())) for r in rows] == [
        (t.number, t.state, t.values, list(t.user_attrs.items())) for t in trials
    ]
