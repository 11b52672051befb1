"""Study results as pandas tables: the trial list and the comparison table."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
from optuna.trial import TrialState

from harness.study.runner import ATTR_DUPLICATE, ATTR_POINT, ATTR_REASON, ATTR_RUN, ATTR_SEED, ATTR_SURPLUS
from harness.study.spec import Point


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per real trial (surplus and duplicate pops left out): number, state, swept values,
    objective, final metrics, duration, MLflow run id, failure reason."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if attrs.get(ATTR_SURPLUS) or attrs.get(ATTR_DUPLICATE):
            continue
        point = (
            Point(json.loads(attrs[ATTR_POINT]), int(attrs.get(ATTR_SEED, 0)))
            if ATTR_POINT in attrs
            else None
        )
        row = {"trial": trial.number, "state": trial.state.name}
        if point is not None:
            row.update(point.label())
        row["objective"] = trial.value if trial.state == TrialState.COMPLETE else None
        row.update({k.removeprefix("metric."): v for k, v in attrs.items() if k.startswith("metric.")})
        row["duration_s"] = attrs.get("duration_s")
        row["mlflow_run_id"] = attrs.get(ATTR_RUN)
        row["failure_reason"] = attrs.get(ATTR_REASON)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(frame: pd.DataFrame, rows: str, columns: str, metric: str) -> pd.DataFrame:
    """``metric`` of complete trials as "mean ± std (n)" per (rows, columns) cell, over seeds.

    Points without a ``rows`` or ``columns`` value (baselines such as random init) show "-" there.
    """
    done = frame[frame["state"] == "COMPLETE"].copy() if not frame.empty else frame
    if done.empty or metric not in done:
        return pd.DataFrame()
    for key in (rows, columns):
        done[key] = done[key].map(_label) if key in done else "-"
    grouped = done.groupby([rows, columns])[metric].agg(["mean", "std", "count"])

    def cell(stats: pd.Series) -> str:
        std = "" if math.isnan(stats["std"]) else f" ± {stats['std']:.1f}"
        return f"{stats['mean']:.1f}{std} (n={int(stats['count'])})"

    table = grouped.apply(cell, axis=1).unstack(columns).fillna("")
    table.index.name, table.columns.name = rows, columns
    return table


def _label(value) -> str:
    """A table header: whole floats as ints (pandas turns int columns with gaps into floats), NaN as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
