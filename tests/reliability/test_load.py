"""Load: 4 workers share 100 short trials on one PostgreSQL storage, through the real runner,
Optuna storage and MLflow store: no trial lost or duplicated, one MLflow child run per trial."""

from __future__ import annotations

import os
import time

import optuna
import pytest
import sqlalchemy
import yaml
from mlflow import MlflowClient
from reliability_helpers import env_with, rho, tiny_experiment_tree

TRIALS = int(os.environ.get("RHO_LOAD_TRIALS", "100"))


@pytest.mark.slow
def test_four_workers_run_a_hundred_trials_each_exactly_once(tiny_synth, tmp_path, mlflow_uri):
    url = os.environ.get("RHO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RHO_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    engine.dispose()
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    # the shortest real trial: one step of one epoch (batch = the 12 videos), no evaluation
    tree["data"].update(batch_size=12, val=None)
    tree["optim"].update(epochs=1, base_batch_size=12)
    tree["runtime"]["log_every"] = 100
    spec = tmp_path / "load.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "load",
                "experiment": tree,
                "seeds": list(range(TRIALS)),
                "objective": {"metric": "loss", "direction": "minimize"},
                "limits": {"heartbeat_interval": 2, "grace_period": 60, "max_retries": 2},
            }
        )
    )
    started = time.monotonic()
    # one thread per worker: four workers share a few cores
    out = rho(
        "study",
        "run",
        str(spec),
        "--workers",
        "4",
        "--storage",
        url,
        "--tracking-uri",
        mlflow_uri,
        env=env_with(OMP_NUM_THREADS="1"),
        timeout=900,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(f"{TRIALS} trials on 4 workers in {elapsed:.0f} s")

    study = optuna.load_study(study_name="load", storage=url)
    real = [
        t
        for t in study.trials
        if not t.user_attrs.get("rho.surplus") and not t.user_attrs.get("rho.duplicate")
    ]
    complete = [t for t in real if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(real) == TRIALS, [(t.number, t.state) for t in real]  # no point ran twice
    assert len(complete) == TRIALS  # none lost
    assert sorted(t.user_attrs["rho.seed"] for t in complete) == list(range(TRIALS))
    workers = {t.user_attrs.get("mlflow_run_id") for t in complete}
    assert len(workers) == TRIALS

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("load")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("rho.role") == "study"]
    children = [r for r in runs if r.data.tags.get("rho.role") != "study"]
    assert len(parents) == 1
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)
    assert {r.info.run_id for r in children} == workers, "exactly one MLflow child run per finished trial"
    assert sorted(int(r.data.tags["seed"]) for r in children) == list(range(TRIALS))
