"""Comparison tables of a study's finished runs: one metric per table, rows × columns of swept
values, each cell mean ± std over seeds with n and a 95% interval, the best of each column
marked, the baselines as extra rows; and the published figures beside a full-scale study's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.references import SOURCES, references_for
from harness.report.stats import cell_stats

BASELINE_COLUMN = "baseline"
PREFERRED_ROWS = ("method.name", "backbone.name")
PREFERRED_COLUMNS = ("data.clips", "data.t_max", "optim.epochs")


@dataclass
class Comparison:
    """One metric over ``rows`` × ``columns``: ``stats`` has one row per cell (see ``cell_stats``)
    plus ``baseline`` (a baseline row) and ``best`` (the best mean of its column among the grid rows)."""

    metric: str
    rows: str
    columns: str
    direction: str
    stats: pd.DataFrame

    @property
    def row_labels(self) -> list[str]:
        return list(dict.fromkeys(self.stats[self.rows]))

    @property
    def column_labels(self) -> list[str]:
        return list(dict.fromkeys(self.stats.sort_values("baseline", kind="stable")[self.columns]))

    def cell(self, row: str, column: str) -> pd.Series | None:
        """The statistics of one cell, or None where there is no run."""
        hit = self.stats[(self.stats[self.rows] == row) & (self.stats[self.columns] == column)]
        return None if hit.empty else hit.iloc[0]


def metric_direction(metric: str, objective: str | None, direction: str) -> str:
    """``maximize`` or ``minimize``: the study's own for its objective; else accuracies up, losses down."""
    if metric == objective:
        return direction
    return "minimize" if "loss" in metric.split(".")[-1] or metric.endswith("_time") else "maximize"


def choose_axes(
    frame: pd.DataFrame, swept: list[str], rows: str | None, columns: str | None
) -> tuple[str, str]:
    """The table's row and column keys: as given, else the usual ones among the swept keys (method
    rows, ρ columns), else the first two swept keys; a key may also be any logged config key."""
    grid = frame[~frame["baseline"]] if "baseline" in frame else frame
    varying = [key for key in swept if key in grid and grid[key].astype(str).nunique() > 1] or swept
    for key, what in ((rows, "rows"), (columns, "columns")):
        if key is not None and key not in frame:
            raise KeyError(
                f"--{what} {key}: no run logged that key; swept keys: {', '.join(swept) or 'none'} "
                "(any config key such as method.name or data.clips also works)"
            )
    if columns is None:
        columns = next((k for k in PREFERRED_COLUMNS if k in varying and k != rows), None)
        columns = columns or next((k for k in reversed(varying) if k != rows), "data.clips")
    if rows is None:
        rows = next((k for k in PREFERRED_ROWS if k in frame and k != columns), None)
        rows = rows or next((k for k in varying if k != columns), "seed")
    return rows, columns


def comparison(frame: pd.DataFrame, rows: str, columns: str, metric: str, direction: str) -> Comparison:
    """The comparison table of ``metric`` over finished runs in ``frame`` (grid rows, then baselines)."""
    data = frame.astype({rows: object, columns: object}) if rows in frame and columns in frame else frame
    data = data.copy()
    baseline = data["baseline"].astype(bool) if "baseline" in data else pd.Series(False, index=data.index)
    if baseline.any():
        data.loc[baseline, rows] = data.loc[baseline, "baseline_label"]
        data.loc[baseline, columns] = BASELINE_COLUMN
    grid = cell_stats(data[~baseline], rows, columns, metric).assign(baseline=False)
    base = cell_stats(data[baseline], rows, columns, metric).assign(baseline=True)
    parts = [part for part in (grid, base) if not part.empty]
    stats = pd.concat(parts, ignore_index=True) if parts else grid
    stats["best"] = False
    grid_stats = stats[~stats["baseline"]]
    if not grid_stats.empty:  # every cell that ties the best mean of its column is marked
        best = grid_stats.groupby(columns)["mean"].transform("max" if direction == "maximize" else "min")
        stats.loc[grid_stats.index, "best"] = [
            math.isclose(m, b, rel_tol=1e-9, abs_tol=1e-12)
            for m, b in zip(grid_stats["mean"], best, strict=True)
        ]
    return Comparison(metric, rows, columns, direction, stats)


def reference_table(frame: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """Our mean beside the published figures for the same method and ρ (runs of the same backbone
    and epochs only), one column per source (``SOURCES``: the paper, SlowFast's model zoo), never
    mixed; NaN where a source has no figure. Returns the table and the citations of the sources
    it shows, numbered in column order."""
    sources = list(SOURCES)
    columns = ["method", "rho", "ours", "n", *sources, *(f"ours - {source}" for source in sources)]
    if frame.empty or metric not in frame or not {"method.name", "data.clips"} <= set(frame):
        return pd.DataFrame(columns=columns), []
    rows, shown = [], set()
    groups = frame[frame[metric].notna()].groupby(
        ["backbone.name", "optim.epochs", "method.name", "data.clips"]
    )
    for (backbone, epochs, method, rho), runs in groups:
        published = {
            ref.source: ref.value
            for ref in references_for(metric, str(backbone), int(epochs))
            if (ref.method, ref.rho) == (method, int(rho))
        }
        if not published:
            continue
        shown |= set(published)
        ours = float(runs[metric].mean())
        row = {"method": method, "rho": int(rho), "ours": ours, "n": len(runs)}
        for source in sources:
            row[source] = published.get(source, math.nan)
            row[f"ours - {source}"] = ours - row[source]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns), [SOURCES[s] for s in sources if s in shown]


def format_value(value: float, like: float | None = None) -> str:
    """A number for a table: one decimal for percentages and the like, three digits for small
    values; with ``like``, as many decimals as ``like`` gets (a std beside its mean)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    decimals = _decimals(value if like is None else like)
    return f"{value:.{decimals}f}"


def _decimals(value: float) -> int:
    """1 for |value| >= 10, else enough for three significant digits (at most 6)."""
    if value == 0 or abs(value) >= 10:
        return 1
    return min(6, max(1, 2 - math.floor(math.log10(abs(value)))))
