"""Statistics of a metric over seeds per (rows, columns) cell: n, mean, std and the 95% Student-t
interval, in natural order; shared by the report's tables and plots and ``rho study``'s table."""

from __future__ import annotations

import math

import pandas as pd
from scipy.stats import t as student_t


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
    order = stats[rows].map(natural_key).to_list(), stats[columns].map(natural_key).to_list()
    stats = stats.iloc[sorted(range(len(stats)), key=lambda i: (order[0][i], order[1][i]))]
    return stats[out_columns].reset_index(drop=True)


def natural_key(label: str) -> tuple:
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
