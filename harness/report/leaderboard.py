"""``rho leaderboard``: across every study in the MLflow store, the best finished run per
(method, backbone, ρ) on each benchmark (``eval.<benchmark>.<protocol>.top1``), ranked, with the
cost of its pretraining (device-hours, training PFLOPs) and the run id of each row; written as
Markdown, CSV and one HTML page."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.redact import redact
from harness.report.compare import format_value
from harness.report.render import Block, Heading, Table, Text, to_html, to_markdown
from harness.report.runs import PAGE_SIZE, ReportError, iter_experiments, iter_runs, parse_value, run_cost
from harness.tracking import mlflow_client

TOP1 = re.compile(r"^eval\.(?P<benchmark>.+)\.(?P<protocol>[^.]+)\.top1$")
GROUP = ["method", "backbone", "rho"]
COLUMNS = [
    "rank",
    *GROUP,
    "top1",
    "top5",
    "device_hours",
    "train_pflops",
    "runs",
    "study",
    "run_id",
    "run_name",
]


def cost_cell(value: float | None) -> str:
    """A cost for a table: three significant digits, "-" when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"


@dataclass
class Leaderboard:
    """One ranked table per (benchmark, protocol)."""

    tables: dict[tuple[str, str], pd.DataFrame]
    tracking_uri: str

    def blocks(self) -> list[Block]:
        blocks: list[Block] = [
            Heading("Leaderboard", 1),
            Text(
                f"MLflow store {redact(self.tracking_uri)}: the best finished study run per (method, backbone, ρ) "
                "on each benchmark, ranked by top-1 (%); 'runs' counts the runs of that group (seeds, studies). "
                "Cost of the row's pretraining: device-hours (training wall time × GPUs or CPU processes) "
                "and training PFLOPs (one step's FLOPs × steps × devices; '-' for a run logged without them)."
            ),
        ]
        for (benchmark, protocol), table in self.tables.items():
            blocks.append(Heading(f"{benchmark} ({protocol})"))
            rows = [
                [
                    (str(row["rank"]), ""),
                    (str(row["method"]), ""),
                    (str(row["backbone"]), ""),
                    (str(row["rho"]), ""),
                    (format_value(row["top1"]), ""),
                    (format_value(row["top5"]), ""),
                    (cost_cell(row["device_hours"]), ""),
                    (cost_cell(row["train_pflops"]), ""),
                    (str(row["runs"]), ""),
                    (str(row["study"]), ""),
                    (str(row["run_id"]), ""),
                ]
                for _, row in table.iterrows()
            ]
            header = [
                "rank",
                "method",
                "backbone",
                "ρ",
                "top-1",
                "top-5",
                "device-hours",
                "train PFLOPs",
                "runs",
                "study",
                "MLflow run id",
            ]
            blocks.append(
                Table(header, rows, bold={(0, 4)} if rows else set(), id=f"lb-{benchmark}-{protocol}")
            )
        return blocks


def study_runs_everywhere(tracking_uri: str, page_size: int = PAGE_SIZE) -> pd.DataFrame:
    """One row per finished study trial run and benchmark it was evaluated on, across all experiments."""
    client = mlflow_client(tracking_uri)
    ids = [e.experiment_id for e in iter_experiments(client, page_size)]
    records = []
    for start in range(0, len(ids), 50):  # a few experiments per query keeps the SQL small
        for run in iter_runs(client, ids[start : start + 50], "attributes.status = 'FINISHED'", page_size):
            tags = run.data.tags
            if "study" not in tags or tags.get("rho.role") == "study":
                continue
            end = run.info.end_time
            wall_s = (end - run.info.start_time) / 1000 if end else math.nan
            cost = run_cost(run.data.metrics, wall_s, int(tags.get("world_size", 1)))
            for key, value in run.data.metrics.items():
                match = TOP1.match(key)
                if not match:
                    continue
                top5 = run.data.metrics.get(key.removesuffix("top1") + "top5")
                records.append(
                    {
                        "benchmark": match["benchmark"],
                        "protocol": match["protocol"],
                        "method": tags.get("method"),
                        "backbone": tags.get("backbone"),
                        "rho": parse_value(tags.get("rho")),
                        "top1": value,
                        "top5": top5,
                        **cost,
                        "study": tags["study"],
                        "run_id": run.info.run_id,
                        "run_name": run.info.run_name,
                        "start_time": run.info.start_time,
                    }
                )
    return pd.DataFrame(records)


def build_leaderboard(
    tracking_uri: str, benchmark: str | None = None, page_size: int = PAGE_SIZE
) -> Leaderboard:
    """The best run per (method, backbone, ρ) on each benchmark (or only ``benchmark``: a name such
    as ``synth-linear`` or ``name.protocol`` such as ``k400.knn``), ranked by top-1."""
    runs = study_runs_everywhere(tracking_uri, page_size)
    if runs.empty:
        raise ReportError(
            f"no finished study run with an evaluation metric (eval.<benchmark>.<protocol>.top1) in "
            f"{redact(tracking_uri)}; run a study first (`rho study run SPEC`) or pass --tracking-uri"
        )
    if benchmark is not None:
        names = runs["benchmark"] + "." + runs["protocol"]
        chosen = runs[(runs["benchmark"] == benchmark) | (names == benchmark)]
        if chosen.empty:
            known = sorted(set(runs["benchmark"]) | set(names))
            raise ReportError(
                f"--benchmark {benchmark}: no run was evaluated on it; benchmarks: {', '.join(known)}"
            )
        runs = chosen
    tables = {}
    for (name, protocol), group in runs.groupby(["benchmark", "protocol"], sort=True):
        group = group.astype({"rho": str}).sort_values(["top1", "start_time"], ascending=[False, True])
        best = group.groupby(GROUP, sort=False).head(1).copy()
        best["runs"] = best.set_index(GROUP).index.map(group.groupby(GROUP).size()).to_list()
        best.insert(0, "rank", range(1, len(best) + 1))
        tables[(name, protocol)] = best[COLUMNS].reset_index(drop=True)
    return Leaderboard(tables, tracking_uri)


def write_leaderboard(board: Leaderboard, out: str | Path) -> list[Path]:
    """``leaderboard.md``, ``leaderboard.html`` and ``leaderboard.csv`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = board.blocks()
    paths = [out / "leaderboard.md", out / "leaderboard.html", out / "leaderboard.csv"]
    paths[0].write_text(to_markdown(blocks))
    paths[1].write_text(to_html(blocks, "rho-harness leaderboard"))
    frames = [t.assign(benchmark=b, protocol=p) for (b, p), t in board.tables.items()]
    pd.concat(frames, ignore_index=True).to_csv(paths[2], index=False)
    return paths
