"""Study results as pandas tables: the trial list and the comparison table."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
from optuna.trial import TrialState
from scipy.stats import t as student_t

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


def cell_stats(frame: pd.DataFrame, rows: str, columns: str, metric: str) -> pd.DataFrame:
    """``metric`` per (rows, columns) cell of ``frame`` (one row per run or trial), over seeds.

    Returns one row per cell: ``rows``, ``columns`` (as header labels; a missing value, such as
    the ρ of a random-init baseline, is "-"), ``n``, ``mean``, ``std`` (sample, NaN for n = 1)
    and the 95% Student-t interval of the mean ``ci_low``, ``ci_high`` (NaN for n = 1), in
    natural order (1, 2, 10; not "1", "10", "2"). Rows without a value of ``metric`` are left out.
    """
    out_columns = [rows, columns, "n", "mean", "std", "ci_low", "ci_high"]
    if frame.empty or metric not in frame:
        return pd.DataFrame(columns=out_columns)
    data = frame[frame[metric].notna()].copy()
    for key in (rows, columns):
        data[key] = data[key].map(_label) if key in data else "-"
    grouped = data.groupby([rows, columns], sort=False)[metric]
    stats = grouped.agg(n="count", mean="mean", std="std").reset_index()
    half = [
        float(student_t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        for n, std in zip(stats["n"], stats["std"], strict=True)
    ]
    stats["ci_low"] = stats["mean"] - half
    stats["ci_high"] = stats["mean"] + half
    order = stats[rows].map(_natural).to_list(), stats[columns].map(_natural).to_list()
    stats = stats.iloc[sorted(range(len(stats)), key=lambda i: (order[0][i], order[1][i]))]
    return stats[out_columns].reset_index(drop=True)


def comparison_table(frame: pd.DataFrame, rows: str, columns: str, metric: str) -> pd.DataFrame:
    """``metric`` of complete trials as "mean ± std (n)" per (rows, columns) cell, over seeds.

    Points without a ``rows`` or ``columns`` value (baselines such as random init) show "-" there.
    """
    done = frame[frame["state"] == "COMPLETE"] if not frame.empty else frame
    stats = cell_stats(done, rows, columns, metric)
    if stats.empty:
        return pd.DataFrame()

    def cell(row: pd.Series) -> str:
        std = "" if math.isnan(row["std"]) else f" ± {row['std']:.1f}"
        return f"{row['mean']:.1f}{std} (n={int(row['n'])})"

    stats["cell"] = stats.apply(cell, axis=1)
    table = stats.pivot(index=rows, columns=columns, values="cell")
    table = table.reindex(index=list(dict.fromkeys(stats[rows])), columns=list(dict.fromkeys(stats[columns])))
    table = table.reindex(columns=sorted(table.columns, key=_natural)).fillna("")
    table.index.name, table.columns.name = rows, columns
    return table


def _natural(label: str) -> tuple:
    """Sort key of a header label: numbers by value first, then text, "-" last."""
    if label == "-":
        return (2, 0.0, label)
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _label(value) -> str:
    """A table header: whole floats as ints (pandas turns int columns with gaps into floats), NaN as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
