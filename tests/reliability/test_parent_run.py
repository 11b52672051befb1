"""One study, however it is launched: launches that start together elect one MLflow parent run
(a compare-and-set in the study storage), reports cover every trial whichever parent it logged
under, and the parent run is closed when the study's last trial is done."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree

from harness.report.runs import load_study_runs
from harness.study import load_study, prepare_study
from harness.study.attrs import ATTR_PARENT
from harness.study.backend import claim_study_attr, make_storage, open_study
from harness.study.lifecycle import finish_parent_run
from harness.tracking import RunLogger

LAUNCHES = 6

# One launch: open the study, wait at the barrier (a "go" file), then ask for the parent run.
LAUNCH = """
import sys, time
from pathlib import Path
from harness.study import load_study
from harness.study.backend import make_storage, open_study
from harness.study.lifecycle import ensure_parent_run
spec_path, storage, tracking, folder, index = sys.argv[1:]
spec = load_study(spec_path, check_files=False)
study = open_study(spec, make_storage(storage, spec))
Path(folder, f"ready{index}").touch()
while not Path(folder, "go").exists():
    time.sleep(0.002)
print(ensure_parent_run(study, spec, tracking))
"""


def _spec(tiny_synth, tmp_path: Path, name: str = "split") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "experiment": tiny_experiment_tree(tiny_synth, tmp_path),
                "grid": {"data.clips": [1, 2]},
                "seeds": [0],
                "objective": {"metric": "loss", "direction": "minimize"},
            }
        )
    )
    return path


def _launch_together(spec: Path, storage: str, tracking: str, folder: Path) -> list[str]:
    folder.mkdir()
    script = folder / "launch.py"
    script.write_text(LAUNCH)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(spec), storage, tracking, str(folder), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(LAUNCHES)
    ]
    deadline = time.monotonic() + 300
    while len(list(folder.glob("ready*"))) < LAUNCHES:
        assert time.monotonic() < deadline, "the launches did not get ready"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (folder / "go").touch()
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        ids.append(out.strip().splitlines()[-1])
    return ids


def _check_one_parent(spec_path: Path, storage: str, tracking: str) -> None:
    spec = load_study(spec_path, check_files=False)
    study = open_study(spec, make_storage(storage, spec))
    study_attr = study.user_attrs[ATTR_PARENT]
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(spec.name)
    parents = client.search_runs([experiment.experiment_id], "tags.`rho.role` = 'study'")
    assert [run.info.run_id for run in parents] == [study_attr]


@pytest.mark.slow
def test_launches_started_together_elect_one_parent_run_on_sqlite(tiny_synth, tmp_path, mlflow_uri):
    spec = _spec(tiny_synth, tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    loaded = load_study(spec, check_files=False)
    open_study(loaded, make_storage(storage, loaded))  # the study exists; the launches race for its parent
    ids = _launch_together(spec, storage, mlflow_uri, tmp_path / "launches")
    assert len(set(ids)) == 1, ids
    _check_one_parent(spec, storage, mlflow_uri)


@pytest.mark.slow
def test_launches_started_together_elect_one_parent_run_on_postgresql(
    tiny_synth, tmp_path, mlflow_uri, postgres_url
):
    url = postgres_url
    spec = _spec(tiny_synth, tmp_path)
    loaded = load_study(spec, check_files=False)
    open_study(loaded, make_storage(url, loaded))
    ids = _launch_together(spec, url, mlflow_uri, tmp_path / "launches")
    assert len(set(ids)) == 1, ids
    _check_one_parent(spec, url, mlflow_uri)


def test_the_claim_is_a_compare_and_set(tiny_synth, tmp_path):
    spec = load_study(_spec(tiny_synth, tmp_path), check_files=False)
    study = open_study(spec, make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", spec))
    assert claim_study_attr(study, "k", "first") == "first"
    assert claim_study_attr(study, "k", "second") == "first"
    assert optuna.load_study(study_name=spec.name, storage=study._storage).user_attrs["k"] == "first"


def test_reports_cover_trials_under_every_parent_and_the_parent_closes_when_done(
    tiny_synth, tmp_path, mlflow_uri
):
    spec_path = _spec(tiny_synth, tmp_path)
    spec = load_study(spec_path, check_files=False)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    added, parent = prepare_study(spec, storage, mlflow_uri)
    assert added == 2
    client = MlflowClient(mlflow_uri)
    assert client.get_run(parent).info.status == "RUNNING"

    # A store from before the election was atomic: a second parent run with a trial of its own.
    twin = RunLogger(
        mlflow_uri, spec.name, run_name=spec.name, tags={"rho.role": "study"}, system_metrics=False
    )
    for index, (run_parent, clips) in enumerate([(parent, 1), (twin.run_id, 2)]):
        child = RunLogger(
            mlflow_uri,
            spec.name,
            run_name=f"trial {index}",
            parent_run_id=run_parent,
            tags={"rho.key": f"key{clips}", "swept.data.clips": str(clips), "seed": "0"},
            system_metrics=False,
        )
        child.log_metrics({"loss": 1.0 + clips}, step=0)
        child.finish("FINISHED")
    runs = load_study_runs(mlflow_uri, spec.name)
    assert sorted(runs.frame["data.clips"]) == [1, 2]

    study = optuna.load_study(study_name=spec.name, storage=make_storage(storage, spec))
    assert not finish_parent_run(study, mlflow_uri)  # two points still waiting
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, 1.0)
    assert finish_parent_run(study, mlflow_uri)
    assert client.get_run(parent).info.status == "FINISHED"
    # Running the study again (a new point) reopens it.
    prepare_study(spec, storage, mlflow_uri)
    assert client.get_run(parent).info.status == "RUNNING"
