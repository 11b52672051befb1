"""The embedded MLflow store under concurrent first use: processes that open a new sqlite store at
the same moment (two ``rho pretrain`` on a fresh clone, a study's workers) all get it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mlflow import MlflowClient

OPEN_AND_LOG = """
import sys, time
from harness.tracking import RunLogger
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
logger = RunLogger(sys.argv[1], "first-use", run_name=sys.argv[3], system_metrics=False)
logger.log_metrics({"x": 1.0}, step=0)
logger.finish()
"""


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Without the lock MLflow's schema migrations collide (duplicate column, alembic CommandError):
    measured 11 of 12 such processes failing before it."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    start = time.time() + 8  # every process has imported mlflow by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_LOG, uri, str(start), f"run-{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("first-use")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"run-{i}" for i in range(4)]
    assert all(run.data.metrics == {"x": 1.0} and run.info.status == "FINISHED" for run in runs)
