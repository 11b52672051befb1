"""Study results as pandas tables: the trial list and the comparison table."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
from optuna.trial import TrialState

from harness.study.attrs import (
    ATTR_DUPLICATE,
    ATTR_DURATION,
    ATTR_METRIC_PREFIX,
    ATTR_POINT,
    ATTR_REASON,
    ATTR_RUN,
    ATTR_SEED,
    ATTR_SURPLUS,
)
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
        row.update(
            {
                k.removeprefix(ATTR_METRIC_PREFIX): v
                for k, v in attrs.items()
                if k.startswith(ATTR_METRIC_PREFIX)
            }
        )
        row["duration_s"] = attrs.get(ATTR_DURATION)
        row["mlflow_run_id"] = attrs.get(ATTR_RUN)
        row["failure_reason"] = attrs.get(ATTR_REASON)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(frame: pd.DataFrame, rows: str, columns: str, metric: str) -> pd.DataFrame:
    """``metric`` of complete trials as "mean ± std (n)" per (rows, columns) cell, over seeds.

    Points without a ``rows`` or ``columns`` value (baselines such as random init) show "-" there.
    """
    # Imported here: harness.report's package pulls in matplotlib, which workers and `rho dashboard`
    # (importing harness.study) do not need.
    from harness.report.stats import cell_stats, natural_key

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
    table = table.reindex(columns=sorted(table.columns, key=natural_key)).fillna("")
    table.index.name, table.columns.name = rows, columns
    return table
