"""The figures (PNG, headless: the Agg backend): a run's training curves, a metric against one swept
factor per series with error bars over seeds, accuracy against compute with its Pareto front."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.report.stats import cell_stats  # noqa: E402

FACTOR_TITLES = {
    "data.clips": "ρ (clips per video)",
    "data.t_max": "t_max (s; none = global)",
    "optim.epochs": "pretraining epochs",
}


def training_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Per-epoch loss (and kNN top-1 when monitored) against epoch; returns the PNG path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    has_knn = any("knn_top1" in h for h in history)
    fig, axes = plt.subplots(1, 2 if has_knn else 1, figsize=(9 if has_knn else 5, 3.5), squeeze=False)
    axes[0, 0].plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title=title)
    if has_knn:
        axes[0, 1].plot(
            epochs, [h.get("knn_top1", float("nan")) for h in history], marker="o", color="tab:green"
        )
        axes[0, 1].set(xlabel="epoch", ylabel="kNN top-1 (%)", title="online kNN monitor")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def factor_plot(
    frame: pd.DataFrame, factor: str, series: str, metric: str, path: str | Path, title: str = ""
) -> Path:
    """``metric`` against ``factor``, one line per ``series`` value, error bars = std over seeds;
    baselines (``frame.baseline``) as dashed horizontal lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = frame[~frame["baseline"]] if "baseline" in frame else frame
    stats = cell_stats(grid, series, factor, metric)
    positions = _positions(stats[factor].to_list())
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = list(stats.groupby(series, sort=False))
    span = (max(positions.values()) - min(positions.values())) or 1.0
    for index, (name, points) in enumerate(groups):
        dodge = (index - (len(groups) - 1) / 2) * 0.015 * span  # keep equal means apart
        ax.errorbar(
            [positions[x] + dodge for x in points[factor]],
            points["mean"],
            yerr=points["std"].fillna(0.0),
            marker="o",
            capsize=3,
            label=str(name),
        )
    if "baseline" in frame:
        for label, runs in frame[frame["baseline"]].groupby("baseline_label"):
            values = runs[metric].dropna()
            if not values.empty:
                ax.axhline(values.mean(), linestyle="--", color="grey", linewidth=1)
                ax.annotate(f"{label}", (0, values.mean()), xycoords=("axes fraction", "data"), fontsize=8)
    ax.set_xticks(list(positions.values()), list(positions.keys()))
    ax.set(xlabel=FACTOR_TITLES.get(factor, factor), ylabel=metric, title=title)
    ax.legend(title=series, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _positions(labels: list[str]) -> dict[str, float]:
    """x positions of header labels: their values where all are numbers, else evenly spaced."""
    unique = list(dict.fromkeys(labels))
    try:
        return {label: float(label) for label in unique}
    except ValueError:
        return {label: float(i) for i, label in enumerate(unique)}


def pareto_front(cost: list[float], value: list[float], maximize: bool = True) -> list[int]:
    """Indices of the points no other point beats on both (less or equal cost and a better value),
    in increasing cost."""
    sign = 1.0 if maximize else -1.0
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -sign * value[i]))
    front, best = [], float("-inf")
    for i in order:
        if sign * value[i] > best:
            front.append(i)
            best = sign * value[i]
    return front


COMPUTE_AXES = {  # compute_plot's x: a column of harness.report.runs and its axis title
    "device_hours": "compute (device-hours: training wall time × GPUs or CPU processes)",
    "train_pflops": "compute (training PFLOPs: one step's FLOPs × steps × devices)",
}


def compute_plot(
    frame: pd.DataFrame,
    metric: str,
    series: str,
    path: str | Path,
    maximize: bool = True,
    title: str = "",
    x: str = "device_hours",
) -> tuple[Path, list[str]]:
    """``metric`` of every finished run against its compute ``x`` (``COMPUTE_AXES``: device-hours,
    the default, or training PFLOPs), coloured by ``series``, with the Pareto front; returns the PNG
    and the run ids on the front. Runs without that cost (logged before cost accounting: no
    FLOPs) are left out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x not in frame:
        frame = frame.assign(**{x: float("nan")})
    runs = frame[frame[metric].notna() & frame[x].notna()]
    cost = runs[x].to_list()
    value = runs[metric].to_list()
    front = pareto_front(cost, value, maximize)
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = runs[series].astype(str) if series in runs else pd.Series("runs", index=runs.index)
    for name in dict.fromkeys(labels):
        mask = (labels == name).to_list()
        ax.scatter([c for c, m in zip(cost, mask, strict=True) if m], runs[metric][mask], label=name, s=25)
    ax.step(
        [cost[i] for i in front],
        [value[i] for i in front],
        where="post",
        color="black",
        linewidth=1,
        label="Pareto front",
    )
    ax.set(xlabel=COMPUTE_AXES.get(x, x), ylabel=metric, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, [runs["run_id"].iloc[i] for i in front]
