"""A study's runs read back from MLflow into pandas: one row per trial run.

The study runner logs one parent run per study (tag ``rho.role=study``) and one child run
per trial, tagged with its study, trial, seed, point key (``rho.key``) and swept values
(``swept.<key>``), with the flattened config as params and the final metrics. This module
pages through ``search_runs`` (a study may have thousands of runs) and turns that into a
frame whose columns are the run's identity, every config key (a swept value where the trial
swept it, else the logged param) and every metric's last value, with the run's cost:
``device_hours`` (``cost.device_seconds`` / 3600; for a run logged before cost accounting, its
wall time × world size) and ``train_pflops`` (``cost.train_flops`` / 1e15; none before).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from harness.errors import RhoError
from harness.redact import redact
from harness.tracking import mlflow_client

PAGE_SIZE = 1000
IDENTITY = (
    "run_id",
    "run_name",
    "status",
    "trial",
    "seed",
    "baseline",
    "baseline_label",
    "wall_s",
    "world_size",
    "device_hours",
    "train_pflops",
)


class ReportError(RhoError):
    """A study or store that cannot be reported on; the message says why and what to do."""


@dataclass
class StudyRuns:
    """The runs of one study: its parent run, the child runs as a frame and what the study swept."""

    name: str
    experiment_id: str
    parent: Run
    frame: pd.DataFrame
    swept: list[str]
    objective: str | None
    direction: str

    @property
    def finished(self) -> pd.DataFrame:
        """Child runs that finished (the ones tables and plots count)."""
        return self.frame[self.frame["status"] == "FINISHED"] if not self.frame.empty else self.frame


def iter_runs(
    client: MlflowClient, experiment_ids: list[str], filter_string: str = "", page_size: int = PAGE_SIZE
) -> Iterator[Run]:
    """Every run matching ``filter_string`` in ``experiment_ids``, page by page."""
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string,
            max_results=page_size,
            page_token=token,
            order_by=["start_time ASC"],
        )
        yield from page
        token = page.token
        if not token:
            return


def iter_experiments(client: MlflowClient, page_size: int = PAGE_SIZE) -> Iterator:
    """Every active experiment of the store, page by page."""
    token = None
    while True:
        page = client.search_experiments(max_results=page_size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?")  # YAML 1.1's float, without "_"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_WORDS = {  # the plain names YAML 1.1 (PyYAML) reads as something else than a string
    **{w: True for w in ("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{w: False for w in ("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")},
    "None": None,  # Python's None as logged; YAML's null words stay text, as below
}


def parse_value(text: str | None):
    """A logged tag or param back to a value: "2" -> 2, "0.2" -> 0.2, "None" -> None, else the text.

    Numbers, booleans and plain names (most of a study's params) take a fast path that gives what
    ``yaml.safe_load`` gives (a report parses every param of every run: 100k runs); the rest go
    through the YAML parser.
    """
    if text is None:
        return None
    if text in _YAML_WORDS:
        return _YAML_WORDS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _NAME.fullmatch(text):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, str, bool)) else text


def run_row(run: Run) -> dict:
    """One run as a flat record: identity, config values (swept tag over param), metrics (last values)."""
    tags, params = run.data.tags, run.data.params
    end = run.info.end_time
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "study": tags.get("study"),
        "trial": parse_value(tags.get("trial")),
        "seed": parse_value(tags.get("seed")),
        "rho.key": tags.get("rho.key"),
        "world_size": int(tags.get("world_size", 1)),
        "wall_s": (end - run.info.start_time) / 1000 if end else math.nan,
    }
    row.update({key: parse_value(value) for key, value in params.items()})
    row.update(
        {key.removeprefix("swept."): parse_value(v) for key, v in tags.items() if key.startswith("swept.")}
    )
    row["seed"] = parse_value(tags.get("seed"))
    row["_swept"] = sorted(key.removeprefix("swept.") for key in tags if key.startswith("swept."))
    row.update(run.data.metrics)
    row.update(run_cost(run.data.metrics, row["wall_s"], row["world_size"]))
    return row


def run_cost(metrics: dict[str, float], wall_s: float, world_size: int) -> dict[str, float]:
    """A run's ``device_hours`` and ``train_pflops`` from its ``cost.*`` metrics (harness.train.cost);
    a run logged before them: its wall time × world size, and no FLOPs (NaN)."""
    device_seconds = metrics.get("cost.device_seconds")
    flops = metrics.get("cost.train_flops")
    return {
        "device_hours": (device_seconds if device_seconds is not None else wall_s * world_size) / 3600,
        "train_pflops": flops / 1e15 if flops is not None else math.nan,
    }


def load_study_runs(tracking_uri: str, study: str, page_size: int = PAGE_SIZE) -> StudyRuns:
    """The parent run and every child run of ``study`` (its MLflow experiment has the study's name)."""
    client = mlflow_client(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        names = sorted(e.name for e in iter_experiments(client) if e.name != "Default")
        raise ReportError(
            f"no MLflow experiment named {study!r} in {redact(tracking_uri)}; studies there: "
            f"{', '.join(names) or 'none'} (run one with `rho study run SPEC`, or pass --tracking-uri)"
        )
    parents = list(iter_runs(client, [experiment.experiment_id], "tags.`rho.role` = 'study'", page_size))
    if not parents:
        raise ReportError(
            f"MLflow experiment {study!r} has no study parent run (tag rho.role=study): "
            "it was not made by `rho study run`"
        )
    parent = parents[-1]  # the runner keeps one; a race may leave a deleted twin, which search skips
    # Every trial of the study, whichever parent it logged under: a store written before the
    # parent's election was atomic (or by two launches that raced then) can hold two parents.
    children = [
        run
        for each in parents
        for run in iter_runs(
            client, [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{each.info.run_id}'", page_size
        )
    ]
    frame = pd.DataFrame([run_row(run) for run in children])
    grid = _grid_keys(parent.data.params.get("grid"))
    swept = sorted({key for keys in frame.get("_swept", []) for key in keys if key != "seed"})
    if not frame.empty:
        frame["baseline"] = [_is_baseline(keys, grid) for keys in frame["_swept"]]
        frame["baseline_label"] = [
            ", ".join(str(row[key]) for key in keys if key != "seed") if row["baseline"] else None
            for keys, (_, row) in zip(frame["_swept"], frame.iterrows(), strict=True)
        ]
        frame = _latest_per_point(frame.drop(columns="_swept"))
    return StudyRuns(
        name=study,
        experiment_id=experiment.experiment_id,
        parent=parent,
        frame=frame,
        swept=swept,
        objective=parent.data.params.get("objective"),
        direction=parent.data.params.get("direction", "maximize"),
    )


def _grid_keys(text: str | None) -> list[str] | None:
    """The grid's dotted keys from the parent run's ``grid`` param (None if absent or cut short)."""
    try:
        return list(json.loads(text)) if text else None
    except json.JSONDecodeError:
        return None


def _is_baseline(swept: list[str], grid: list[str] | None) -> bool:
    """A baseline point sets none of some grid key (e.g. no ``data.clips`` for random init)."""
    if not grid:
        return False
    return any(not any(s == key or s.startswith(f"{key}.") for s in swept) for key in grid)


def _latest_per_point(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per point and seed: a retried trial leaves a failed run and a finished one; keep the
    finished one (the latest if several), so that n counts seeds, not attempts."""
    frame = frame.assign(_done=frame["status"] == "FINISHED").reset_index(drop=True)
    keyed = frame[frame["rho.key"].notna()]
    keep = keyed.sort_values(["_done"], kind="stable").groupby("rho.key").tail(1).index
    unkeyed = frame[frame["rho.key"].isna()].index
    return frame.loc[sorted([*keep, *unkeyed])].drop(columns="_done").reset_index(drop=True)
