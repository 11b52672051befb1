"""Read-only queries on a study's trials in Optuna's RDB tables: counts, the trials that hold an
attribute, and the columns the trial table shows.

``study.get_trials`` builds a FrozenTrial of every trial in the study (its params and
distributions, every intermediate value, every attribute): about 1.4 ms and 120 KB per trial,
so 7 s and 622 MB at 5k stored trials, and minutes and gigabytes at 100k. Optuna's cache in
front of an RDBStorage loads every trial on its first read in a process, whatever ``states`` asks
for. ``rho study status``, ``prepare_study`` and a worker's loop need a count, an existence check,
a handful of ids or one attribute, so they ask for those: a fixed number of statements, and rows
in proportion to what they need, not to the trials stored.

Each query reads the database afresh (what other workers wrote is seen at once, as with the
cache, which reads again every trial that was not finished) and is retried while the database is
unreachable, as every storage call is (``harness.study.storage``). A storage that is not an
RDBStorage (in memory, a journal file) is read through ``study.get_trials``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialModel, TrialUserAttributeModel, TrialValueModel
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Connection, and_, exists, func, not_, or_, select
from sqlalchemy.orm import aliased

from harness.study.storage import ReconnectingRDBStorage, _retry

T = TypeVar("T")


def database(study: optuna.Study) -> RDBStorage | None:
    """The RDBStorage under the study's storage (under Optuna's cache layer), or None."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if isinstance(storage, RDBStorage) else None


def _read(study: optuna.Study, what: str, query: Callable[[Connection], T]) -> T:
    """``query`` on a connection of the study's database, retried while it is unreachable."""
    storage = database(study)
    assert storage is not None

    def call() -> T:
        with storage.engine.connect() as connection:
            return query(connection)

    if isinstance(storage, ReconnectingRDBStorage):
        return _retry(storage._where, what, call)
    return call()


def _in_study(study: optuna.Study, states: Collection[TrialState] | None) -> Any:
    """The SQL condition: a trial of ``study`` (in one of ``states``, when given)."""
    condition = TrialModel.study_id == study._study_id
    return condition if states is None else and_(condition, TrialModel.state.in_(list(states)))


def _frozen(study: optuna.Study, states: Collection[TrialState] | None) -> list[FrozenTrial]:
    """The fallback of a storage without SQL: Optuna's own read."""
    return study.get_trials(deepcopy=False, states=None if states is None else tuple(states))


def count_trials(study: optuna.Study, states: Collection[TrialState] | None = None) -> int:
    """How many trials the study has (in one of ``states``, when given): one COUNT."""
    if database(study) is None:
        return len(_frozen(study, states))
    statement = select(func.count(TrialModel.trial_id)).where(_in_study(study, states))
    return _read(study, "count trials", lambda connection: connection.execute(statement).scalar_one())


def has_trials(study: optuna.Study, states: Collection[TrialState] | None = None) -> bool:
    """Whether the study has a trial (in one of ``states``, when given): one EXISTS."""
    if database(study) is None:
        return bool(_frozen(study, states))
    statement = select(exists().where(_in_study(study, states)).select_from(TrialModel))
    return bool(_read(study, "look for trials", lambda connection: connection.execute(statement).scalar()))


def attr_values(study: optuna.Study, key: str, states: Collection[TrialState] | None = None) -> set[Any]:
    """The distinct values of the user attribute ``key`` over the study's trials (in ``states``):
    as many rows as distinct values, however many trials share them."""
    if database(study) is None:
        return {t.user_attrs[key] for t in _frozen(study, states) if key in t.user_attrs}
    statement = (
        select(TrialUserAttributeModel.value_json)
        .distinct()
        .join(TrialModel, TrialModel.trial_id == TrialUserAttributeModel.trial_id)
        .where(_in_study(study, states), TrialUserAttributeModel.key == key)
    )
    rows = _read(study, f"read {key}", lambda connection: connection.execute(statement).scalars().all())
    return {json.loads(value) for value in rows}


def trials_with_attr(
    study: optuna.Study, key: str, value: Any, states: Collection[TrialState] | None = None
) -> list[tuple[int, int]]:
    """(trial id, number) of the study's trials (in ``states``) whose user attribute ``key`` is
    ``value``, in number order. Optuna stores an attribute as ``json.dumps(value)``, which is
    what the query matches."""
    if database(study) is None:
        return [
            (t._trial_id, t.number) for t in _frozen(study, states) if t.user_attrs.get(key, None) == value
        ]
    statement = (
        select(TrialModel.trial_id, TrialModel.number)
        .join(TrialUserAttributeModel, TrialUserAttributeModel.trial_id == TrialModel.trial_id)
        .where(
            _in_study(study, states),
            TrialUserAttributeModel.key == key,
            TrialUserAttributeModel.value_json == json.dumps(value),
        )
        .order_by(TrialModel.number)
    )
    return _read(
        study, f"find trials by {key}", lambda connection: [tuple(r) for r in connection.execute(statement)]
    )


def attrs_of_trials_with(
    study: optuna.Study, marker: str, keys: Collection[str]
) -> dict[int, dict[str, Any]]:
    """Trial number -> the user attributes ``keys`` (those it has) of each of the study's trials
    that has the user attribute ``marker``: rows for those trials only."""
    if database(study) is None:
        return {
            t.number: {k: t.user_attrs[k] for k in keys if k in t.user_attrs}
            for t in _frozen(study, None)
            if marker in t.user_attrs
        }
    mark = aliased(TrialUserAttributeModel)
    statement = (
        select(TrialModel.number, TrialUserAttributeModel.key, TrialUserAttributeModel.value_json)
        .join(mark, and_(mark.trial_id == TrialModel.trial_id, mark.key == marker))
        .join(
            TrialUserAttributeModel,
            and_(
                TrialUserAttributeModel.trial_id == TrialModel.trial_id,
                TrialUserAttributeModel.key.in_(list(keys)),
            ),
        )
        .where(_in_study(study, None))
    )

    def query(connection: Connection) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for number, key, value in connection.execute(statement):
            out.setdefault(number, {})[key] = json.loads(value)
        return out

    return _read(study, f"read trials with {marker}", query)


def waiting_trials(study: optuna.Study) -> list[tuple[int, int]]:
    """(trial id, number) of the study's WAITING trials, in number order (the order Optuna pops them)."""
    if database(study) is None:
        return [(t._trial_id, t.number) for t in _frozen(study, (TrialState.WAITING,))]
    statement = (
        select(TrialModel.trial_id, TrialModel.number)
        .where(_in_study(study, (TrialState.WAITING,)))
        .order_by(TrialModel.number)
    )
    return _read(
        study, "read waiting trials", lambda connection: [tuple(r) for r in connection.execute(statement)]
    )


def running_since(study: optuna.Study, started_before_utc: datetime) -> list[tuple[int, int]]:
    """(trial id, number) of the study's RUNNING trials that started before ``started_before_utc``
    (naive UTC, as Optuna stores start times), in number order."""
    statement = (
        select(TrialModel.trial_id, TrialModel.number)
        .where(
            _in_study(study, (TrialState.RUNNING,)),
            TrialModel._datetime_start_utc.is_not(None),
            TrialModel._datetime_start_utc < started_before_utc,
        )
        .order_by(TrialModel.number)
    )
    return _read(
        study, "read running trials", lambda connection: [tuple(r) for r in connection.execute(statement)]
    )


class TrialRow:
    """What a trial table shows of one trial: its number, state, values and user attributes (less
    the ones skipped); ``value`` as ``FrozenTrial.value`` has it."""

    __slots__ = ("number", "state", "values", "user_attrs")

    def __init__(
        self, number: int, state: TrialState, values: list[float] | None, user_attrs: dict[str, Any]
    ):
        self.number, self.state, self.values, self.user_attrs = number, state, values, user_attrs

    @property
    def value(self) -> float | None:
        if self.values is None:
            return None
        if len(self.values) > 1:
            raise RuntimeError("This attribute is not available during multi-objective optimization.")
        return self.values[0]


class StoredTrials:
    """A study's trials as a trial table needs them (``trial_rows``), behind the one method of
    ``optuna.Study`` that ``harness.study.tables.trials_frame`` calls, so that the table is built
    by the same code from a few column reads instead of a FrozenTrial per trial."""

    def __init__(self, rows: list[TrialRow] | list[FrozenTrial]):
        self.rows = rows

    def get_trials(
        self, deepcopy: bool = False, states: Collection[TrialState] | None = None
    ) -> list[TrialRow] | list[FrozenTrial]:
        return [row for row in self.rows if states is None or row.state in states]


def stored_trials(study: optuna.Study, skip_attrs: tuple[str, ...] = ()) -> StoredTrials:
    """Every trial of the study, in number order, for ``trials_frame``: three queries (trials,
    values, user attributes), none for params, distributions, intermediate values or system
    attributes; user attributes whose key starts with one of ``skip_attrs`` are not read (columns
    the caller does not show). Attributes come in key order, as Optuna reads them from sqlite."""
    if database(study) is None:
        return StoredTrials(_frozen(study, None))
    return StoredTrials(
        _read(study, "read the trial table", lambda connection: list(_rows(connection, study, skip_attrs)))
    )


def _rows(connection: Connection, study: optuna.Study, skip_attrs: tuple[str, ...]) -> Iterator[TrialRow]:
    in_study = _in_study(study, None)
    values: dict[int, list[float]] = {}
    for trial_id, _objective, value, kind in connection.execute(
        select(
            TrialValueModel.trial_id,
            TrialValueModel.objective,
            TrialValueModel.value,
            TrialValueModel.value_type,
        )
        .join(TrialModel, TrialModel.trial_id == TrialValueModel.trial_id)
        .where(in_study)
        .order_by(TrialValueModel.trial_id, TrialValueModel.objective)
    ):
        values.setdefault(trial_id, []).append(TrialValueModel.stored_repr_to_value(value, kind))
    attrs: dict[int, dict[str, Any]] = {}
    statement = select(
        TrialUserAttributeModel.trial_id, TrialUserAttributeModel.key, TrialUserAttributeModel.value_json
    ).join(TrialModel, TrialModel.trial_id == TrialUserAttributeModel.trial_id)
    statement = statement.where(in_study)
    if skip_attrs:
        statement = statement.where(
            not_(or_(*(TrialUserAttributeModel.key.startswith(p, autoescape=True) for p in skip_attrs)))
        )
    for trial_id, key, value in connection.execute(statement):
        attrs.setdefault(trial_id, {})[key] = json.loads(value)
    for trial_id, number, state in connection.execute(
        select(TrialModel.trial_id, TrialModel.number, TrialModel.state)
        .where(in_study)
        .order_by(TrialModel.number)
    ):
        # sorted by key: the order sqlite's (trial_id, key) index gives Optuna's reads
        yield TrialRow(number, state, values.get(trial_id), dict(sorted(attrs.pop(trial_id, {}).items())))
