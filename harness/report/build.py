"""``rho report STUDY``: a study's runs from MLflow -> tables, plots -> reports/<study>/ and the
study's parent run (artifacts under ``report/``)."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from harness.redact import redact
from harness.report.compare import (
    BASELINE_COLUMN,
    Comparison,
    comparison,
    format_value,
    metric_direction,
    reference_table,
)
from harness.report.paired import POWER, Difference, differences, differences_frame, select_pairs
from harness.report.plots import FACTOR_TITLES, compute_plot, factor_plot, training_curves
from harness.report.references import SOURCES
from harness.report.render import (
    Block,
    Heading,
    Image,
    Table,
    Text,
    comparison_block,
    differences_block,
    to_html,
    to_markdown,
)
from harness.report.runs import IDENTITY, PAGE_SIZE, StudyRuns, load_study_runs
from harness.tracking import mlflow_client

SOURCE_TITLES = {"paper": "paper", "model zoo": "SlowFast model zoo"}

CURVE_METRICS = ("loss", "knn_top1")


@dataclass
class ReportResult:
    """What ``write_report`` made: the folder, every file, the tables, the runs on the Pareto front."""

    out: Path
    files: list[Path]
    comparisons: list[Comparison]
    runs: StudyRuns
    pareto_run_ids: list[str] = field(default_factory=list)
    best_run_ids: list[str] = field(default_factory=list)
    differences: dict[str, list[Difference]] = field(default_factory=dict)


def default_metrics(frame: pd.DataFrame, objective: str | None) -> list[str]:
    """The objective (when logged), then every evaluation top-1 the runs logged."""
    evals = sorted(c for c in frame.columns if c.startswith("eval.") and c.endswith(".top1"))
    first = [objective] if objective and objective in frame else []
    return first + [m for m in evals if m not in first]


def write_report(
    tracking_uri: str,
    study: str,
    out: str | Path | None = None,
    metrics: list[str] | None = None,
    rows: str | None = None,
    columns: str | None = None,
    log_to_parent: bool = True,
    page_size: int = PAGE_SIZE,
    best_curves: int = 3,
    compare: list[tuple[str, list[str]]] | None = None,
    at: dict[str, str] | None = None,
) -> ReportResult:
    """Write the report of ``study`` (tables as Markdown, CSV and one HTML page; PNG plots) to ``out``
    (default ``reports/<study>``) and, unless ``log_to_parent`` is False, log the files to the
    study's MLflow parent run.

    Each metric's table is followed by its differences paired by seed (``harness.report.paired``):
    the pairs of ``compare`` (``[("method.name", ["byol", "moco"])]``) with the keys of ``at``
    fixed, else each column against the one before it in every row and the rows at the last column.
    """
    runs = load_study_runs(tracking_uri, study, page_size)
    metrics = metrics or default_metrics(runs.finished, runs.objective)
    chosen = select_pairs(runs, study, metrics, compare, at, rows, columns)
    finished, metrics, rows, columns, pairs = (
        chosen.finished,
        chosen.metrics,
        chosen.rows,
        chosen.columns,
        chosen.pairs,
    )
    out = Path(out) if out is not None else Path("reports") / study
    out.mkdir(parents=True, exist_ok=True)

    files: list[Path] = []
    comparisons = []
    all_differences: dict[str, list[Difference]] = {}
    description = runs.parent.data.tags.get("mlflow.note.content", "").strip()
    blocks: list[Block] = [Heading(f"Study {study}", 1)]
    blocks += [Text(description)] if description else []
    blocks.append(Text(_summary(runs, tracking_uri, rows, columns)))
    for metric in metrics:
        direction = metric_direction(metric, runs.objective, runs.direction)
        comp = comparison(finished, rows, columns, metric, direction)
        comparisons.append(comp)
        blocks += [
            Heading(f"{metric} ({'higher' if direction == 'maximize' else 'lower'} is better)"),
            comparison_block(comp),
        ]
        files.append(_write_csv(comp.stats.assign(metric=metric), out / f"{_slug(metric)}.csv"))
        references, citations = reference_table(finished[~finished["baseline"]], metric)
        if not references.empty:
            blocks += [
                Heading(f"{metric}: published figures beside ours, one column per source", 3),
                _reference_block(references, citations),
            ]
            blocks += [Text(f"[{i + 1}] {c}") for i, c in enumerate(citations)]
            files.append(_write_csv(references, out / f"{_slug(metric)}.references.csv"))
        diffs = differences(finished, metric, pairs, at)
        all_differences[metric] = diffs
        if diffs:
            blocks += [
                Heading(f"{metric}: differences paired by seed", 3),
                differences_block(diffs, float(finished[metric].abs().mean()), metric),
                Text(_differences_note(diffs)),
            ]
            files.append(_write_csv(differences_frame(diffs, metric), out / f"{_slug(metric)}.paired.csv"))

    primary = metrics[0]
    maximize = metric_direction(primary, runs.objective, runs.direction) == "maximize"
    blocks.append(Heading("Plots"))
    for factor in _factors(finished, runs.swept, columns):
        for metric in metrics:
            series = _series(rows, columns, factor)
            png = factor_plot(
                finished, factor, series, metric, out / f"{_slug(metric)}_vs_{_slug(factor)}.png", title=study
            )
            files.append(png)
            blocks.append(
                Image(
                    png,
                    f"{metric} against {FACTOR_TITLES.get(factor, factor)}, per {series}; "
                    "error bars: std over seeds; dashed: baselines",
                )
            )
    pareto: list[str] = []  # the device-hours plot's front (ReportResult.pareto_run_ids)
    for axis, suffix, unit in (
        ("device_hours", "", "device-hours"),
        ("train_pflops", "_flops", "training PFLOPs"),
    ):
        if axis == "train_pflops" and not finished.get(axis, pd.Series(dtype=float)).notna().any():
            continue  # runs logged before FLOPs were counted: no second plot
        png, front = compute_plot(
            finished,
            primary,
            rows,
            out / f"{_slug(primary)}_vs_compute{suffix}.png",
            maximize,
            title=study,
            x=axis,
        )
        files.append(png)
        blocks.append(
            Image(
                png, f"{primary} against compute ({unit}); the line is the Pareto front ({len(front)} runs)"
            )
        )
        if axis == "device_hours":
            pareto = front

    best = finished[finished[primary].notna()].sort_values(primary, ascending=not maximize).head(best_curves)
    client = mlflow_client(tracking_uri)
    for _, run in best.iterrows():
        history = _epoch_history(client, run["run_id"])
        if history:
            label = f"{run['run_name']}: {primary} = {format_value(run[primary])}"
            png = training_curves(
                history, out / f"curves_{_slug(run['run_name'] or run['run_id'])}.png", label
            )
            files.append(png)
            blocks.append(Image(png, f"training curves of {label} (run {run['run_id']})"))

    blocks.append(Heading("Runs"))
    blocks.append(Text(f"Every child run with its MLflow run id: runs.csv ({len(runs.frame)} rows)."))
    files.append(_write_csv(_runs_table(runs.frame, runs.swept, metrics), out / "runs.csv"))
    markdown = out / "report.md"
    markdown.write_text(to_markdown(blocks))
    page = out / "report.html"
    page.write_text(to_html(blocks, f"rho-harness report: {study}"))
    files += [markdown, page]
    if log_to_parent:
        for path in files:
            client.log_artifact(runs.parent.info.run_id, str(path), "report")
    return ReportResult(out, files, comparisons, runs, pareto, best["run_id"].to_list(), all_differences)


def _summary(runs: StudyRuns, tracking_uri: str, rows: str, columns: str) -> str:
    counts = runs.frame["status"].value_counts().to_dict()
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return (
        f"MLflow store {redact(tracking_uri)}, experiment {runs.name!r} (id {runs.experiment_id}), "
        f"parent run {runs.parent.info.run_id}; {len(runs.frame)} child runs ({states}). "
        f"Objective {runs.objective} ({runs.direction}). Rows: {rows}; columns: {columns}. "
        "Each cell: mean ± sample std over the finished runs (seeds) of that cell, n, and the 95% "
        "Student-t interval of the mean; the best mean of each column in bold (ties: each); baselines "
        f"in italics, in the column {BASELINE_COLUMN!r}. Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC."
    )


def _differences_note(diffs: list[Difference]) -> str:
    tests = sorted({d.test for d in diffs})
    welch = (
        " Where the seeds of two cells do not pair up (the note says why), Welch's unequal-variance "
        "t interval of the difference of means instead."
        if "Welch t" in tests
        else ""
    )
    return (
        "A − B per seed (the same seed: the same data order, and the same initialisation where the "
        "architecture matches); mean ± sd of the differences over n seeds and their 95% paired "
        "Student-t interval (scipy's ttest_rel; a bootstrap has too few distinct resamples at a "
        f"handful of seeds).{welch} Verdict: A > B where the interval lies above 0, B > A below, "
        f"else not resolved at n. Detectable: the smallest true difference this test resolves with "
        f"{POWER:.0%} power at this n (noncentral t, given the sd measured); `rho study plan` gives the "
        "seeds a smaller difference needs."
    )


def _reference_block(table: pd.DataFrame, citations: list[str]) -> Table:
    """Ours, then one column per source of published figures (its citation's number), then ours
    minus each; '-' where a source has no figure."""
    sources = [s for s, citation in SOURCES.items() if citation in citations]
    numbers = {s: citations.index(SOURCES[s]) + 1 for s in sources}
    header = ["method", "ρ", "ours", *(f"{SOURCE_TITLES[s]} [{numbers[s]}]" for s in sources)]
    header += [f"ours − {s}" for s in sources]
    rows = [
        [
            (row["method"], ""),
            (str(row["rho"]), ""),
            (format_value(row["ours"]), f"n={row['n']}"),
            *((format_value(row[s]), "") for s in sources),
            *(("-" if math.isnan(row[f"ours - {s}"]) else f"{row[f'ours - {s}']:+.1f}", "") for s in sources),
        ]
        for _, row in table.iterrows()
    ]
    return Table(header, rows, id="references")


def _factors(frame: pd.DataFrame, swept: list[str], columns: str) -> list[str]:
    """Swept factors worth a line plot: ρ, t_max, epochs and the table's column key, where they vary."""
    grid = frame[~frame["baseline"]]
    candidates = [*FACTOR_TITLES, columns]
    return [
        key
        for key in dict.fromkeys(candidates)
        if key in swept and key in grid and grid[key].astype(str).nunique() > 1
    ]


def _series(rows: str, columns: str, factor: str) -> str:
    """One line per value of the table's row key, unless that is the factor itself or the seed."""
    if rows not in (factor, "seed"):
        return rows
    return "method.name" if factor != "method.name" else columns


def _epoch_history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    """Per-epoch metrics of a run (logged as ``epoch.<name>`` at step = epoch)."""
    by_epoch: dict[int, dict[str, float]] = {}
    for name in CURVE_METRICS:
        for metric in client.get_metric_history(run_id, f"epoch.{name}"):
            by_epoch.setdefault(metric.step, {"epoch": metric.step})[name] = metric.value
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _runs_table(frame: pd.DataFrame, swept: list[str], metrics: list[str]) -> pd.DataFrame:
    keys = [k for k in ("method.name", "backbone.name", "data.clips", *swept) if k in frame]
    extra = sorted(c for c in frame.columns if c.startswith("eval.") and c not in metrics)
    columns = [c for c in dict.fromkeys([*IDENTITY, *keys, *metrics, *extra]) if c in frame]
    return frame[columns].sort_values(["trial"], kind="stable")


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))
