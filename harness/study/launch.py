"""Processes a study starts: local worker processes (``rho study run --workers``), and a trial run
as a torchrun job whose rank 0 reports each epoch to the trial's pruner itself (``$RHO_TRIAL``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna

from harness.config import Experiment
from harness.study.backend import open_trial, pruner_settings, pruning_callback, trial_id
from harness.study.spec import StudySpec

TRIAL_ENV = "RHO_TRIAL"
MAX_RUN_NAME = 200  # the UI shows a name's start; the point's values are in the swept.* tags too


def trial_run_name(study: str, number: int, label: dict) -> str:
    """A trial's MLflow run name, e.g. ``grid-t3 method.name=simclr data.clips=2 seed=0``: unique
    in the study by its number, told apart in the UI by its point and seed."""
    values = " ".join(f"{key}={value}" for key, value in label.items())
    return f"{study}-t{number} {values}"[:MAX_RUN_NAME]


def torchrun_pruning_callback() -> Callable[[int, dict[str, float]], None] | None:
    """In a torchrun trial's rank 0: the pruning callback of the trial named by ``$RHO_TRIAL``.

    The worker that starts the job puts the study, the trial and its pruner there (and the
    storage URL in ``$RHO_STORAGE``), so that rank 0 reports each epoch to Optuna itself and all
    ranks stop together when the trial is pruned; None outside such a job or without a pruner.
    """
    raw = os.environ.get(TRIAL_ENV)
    if not raw:
        return None
    settings = json.loads(raw)
    if settings["pruner"]["kind"] == "none":
        return None
    state: dict[str, Callable] = {}

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if "callback" not in state:  # connect on the first report, on rank 0 only
            trial = open_trial(
                settings["study"], os.environ["RHO_STORAGE"], settings["trial_id"], settings["pruner"]
            )
            state["callback"] = pruning_callback(trial, settings["metric"])
        state["callback"](epoch, metrics)

    return report_epoch


def run_torchrun(
    spec: StudySpec,
    trial: optuna.Trial,
    experiment: Experiment,
    output: Path,
    *,
    gpus: int,
    tracking_uri: str,
    storage_url: str,
    parent_run_id: str,
    tags: dict[str, str],
    run_name: str,
    on_run_start: Callable[[str], None],
) -> dict[str, float]:
    """Run the trial as a ``torchrun --nproc_per_node=gpus`` job.

    Rank 0 writes its MLflow run id to ``result.json`` as soon as the run exists, and the metrics
    when it ends; ``on_run_start`` gets the run id either way, also when the job fails, so that
    the trial (and a retry of it) links to its run. Rank 0 reports every epoch to the trial in
    the storage itself (the study, the trial and its pruner, passed as ``$RHO_TRIAL``); a pruned
    job ends with ``"pruned"`` in ``result.json``, raised here as ``optuna.TrialPruned``.
    """
    output.mkdir(parents=True, exist_ok=True)
    config = output / "trial_config.yaml"
    # The store URL (it may hold a password) goes to the ranks in their environment, never in
    # argv (which `ps` shows to every user) or in the config file; with the config's own
    # runtime.tracking_uri cleared, $MLFLOW_TRACKING_URI is what the ranks use.
    config.write_text(replace(experiment, runtime=replace(experiment.runtime, tracking_uri=None)).to_yaml())
    result = output / "result.json"
    result.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port: several local workers may each run a torchrun job
        f"--nproc_per_node={gpus}",
        "-m",
        "harness",
        "pretrain",
        str(config),
        "--resume",
        "--new-run",
        "--output",
        str(output),
        "--run-name",
        run_name,
        "--parent-run-id",
        parent_run_id,
        "--result-json",
        str(result),
        "--tags",
        json.dumps(tags),
    ]
    pruning = {
        "study": spec.name,
        "trial_id": trial_id(trial),
        "metric": spec.pruner_metric,
        "pruner": pruner_settings(spec),
    }
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, RHO_STORAGE=storage_url)
    env[TRIAL_ENV] = json.dumps(pruning)
    job = subprocess.run(command, env=env)
    payload = json.loads(result.read_text()) if result.is_file() else {}
    if payload.get("run_id"):
        on_run_start(payload["run_id"])
    if job.returncode == 0 and payload.get("pruned"):
        raise optuna.TrialPruned(payload["pruned"])
    if job.returncode != 0:
        raise RuntimeError(
            f"the torchrun job of trial {trial.number} exited with code {job.returncode}; "
            "its ranks' errors are in this worker's output above"
        )
    return payload["metrics"]


def worker_command(
    spec_path: str, storage_url: str, tracking_uri: str | None, gpus_per_trial: int
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one local worker process.

    The storage and tracking URLs travel in the environment (``RHO_STORAGE``,
    ``MLFLOW_TRACKING_URI``), which the worker reads when ``--storage`` and ``--tracking-uri``
    are absent: a PostgreSQL or MLflow server URL may hold a password, and argv is visible to
    every user of the machine (``ps``), the environment only to the process's owner.
    """
    env = dict(os.environ, RHO_STORAGE=storage_url)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [sys.executable, "-m", "harness", "study", "worker", spec_path]
    if gpus_per_trial:
        command += ["--gpus-per-trial", str(gpus_per_trial)]
    return command, env


def run_workers(
    spec_path: str, storage_url: str, tracking_uri: str | None, workers: int, gpus_per_trial: int
) -> int:
    """Start ``workers`` local worker processes on one storage (one GPU each when there are GPUs); wait for them."""
    gpus = _visible_gpus()
    processes = []
    for index in range(workers):
        command, env = worker_command(spec_path, storage_url, tracking_uri, gpus_per_trial)
        if gpus:
            per = max(1, gpus_per_trial)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[(index * per + j) % len(gpus)] for j in range(per))
        processes.append(subprocess.Popen(command, env=env))
    try:
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in processes:
            p.wait()
        raise
    return max(codes, default=0)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
