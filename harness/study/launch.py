"""Processes a study starts: local worker processes (``rho study run --workers``), and a trial run
as a torchrun job whose rank 0 reports each epoch to the trial's pruner itself (``$RHO_TRIAL``).

Stop signals travel down: ``rho study run`` passes each one it gets to its workers, and a worker
to its torchrun job, which passes it to the ranks (``--signals-to-handle``); each level waits for
the one below to stop at a step with a checkpoint there. A child never outlives its parent: a
worker (``die_with_parent``) and a torchrun job get SIGTERM when the process that started them
dies, even by SIGKILL, so that none is left holding CPUs and GPUs.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import optuna

from harness.config import Experiment
from harness.runtime import EXIT_PREEMPTED, Preempted, signal_numbers, stop_requested, stop_signals
from harness.study.backend import open_trial, pruner_settings, pruning_callback, trial_id
from harness.study.spec import StudySpec

log = logging.getLogger(__name__)

TRIAL_ENV = "RHO_TRIAL"
PARENT_ENV = "RHO_PARENT_PID"  # a worker started by `rho study run --workers`: its parent's pid
MAX_RUN_NAME = 200  # the UI shows a name's start; the point's values are in the swept.* tags too
PR_SET_PDEATHSIG = 1  # linux/prctl.h
TORCHRUN_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # torchrun's own default
SHUTDOWN_TIMEOUT = "600"  # s torchrun lets its ranks take to stop (a step and a checkpoint) before SIGKILL

_children: list[subprocess.Popen] = []  # the torchrun job running now: where a stop signal goes


def forward_signal(signum: int) -> None:
    """Send ``signum`` to the child processes running now (a worker's torchrun job)."""
    for child in list(_children):
        if child.poll() is None:
            try:
                child.send_signal(signum)
            except OSError:
                pass


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), loaded once: a forked child about to exec calls it without loading anything."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _set_parent_death_signal(signum: int) -> bool:
    """Linux: have the kernel send ``signum`` to this process when its parent dies; False elsewhere."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Make this process get ``signum`` (SIGTERM: with the default stop signals, a stop at the next
    step with a checkpoint, and the trial re-queued) once its parent ``parent_pid`` is gone: the
    kernel's parent-death signal on Linux, else a thread that polls ``os.getppid()`` every second.
    A parent already gone sends it at once."""
    if not _set_parent_death_signal(signum):

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os.kill(os.getpid(), signum)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told to watch it
        os.kill(os.getpid(), signum)


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
            state["callback"] = pruning_callback(
                trial,
                settings["metric"],
                settings["pruner"].get("direction", "maximize"),
                settings.get("epochs"),
            )
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
    new_run: bool = True,
) -> dict[str, float]:
    """Run the trial as a ``torchrun --nproc_per_node=gpus`` job.

    ``new_run``: start a new MLflow run (False: a re-queued trial, whose run goes on). A stop signal
    that the worker gets goes to torchrun, which passes it to the ranks; they stop at a step with a
    checkpoint there and rank 0 writes ``"preempted"`` to ``result.json``, raised here as
    ``Preempted``.

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
        "epochs": experiment.optim.epochs,  # the trial's own: no pruning after its last epoch
        "pruner": pruner_settings(spec),
    }
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, RHO_STORAGE=storage_url)
    env[TRIAL_ENV] = json.dumps(pruning)
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT)
    handled = dict.fromkeys([*TORCHRUN_SIGNALS, *experiment.runtime.stop_signals])
    command[3:3] = [f"--signals-to-handle={','.join(handled)}"]  # and passed on to the ranks
    if not new_run:  # a re-queued trial: its checkpoint's MLflow run goes on
        command.remove("--new-run")
    parent = os.getpid()
    _prctl()  # loaded here, not in the forked child
    job = subprocess.Popen(command, env=env, preexec_fn=lambda: _orphan_guard(parent))
    _children.append(job)
    try:
        if stop_requested():  # the worker was told to stop while the job started
            forward_signal(stop_requested())
        job.wait()
    finally:
        _children.remove(job)
    payload = json.loads(result.read_text()) if result.is_file() else {}
    if payload.get("run_id"):
        on_run_start(payload["run_id"])
    if job.returncode == 0 and payload.get("pruned"):
        raise optuna.TrialPruned(payload["pruned"])
    if payload.get("preempted"):
        raise Preempted(payload["preempted"])
    if stop_requested() and "metrics" not in payload:  # stopped, though not at a step (before training, say)
        raise Preempted(
            f"the torchrun job of trial {trial.number} ended with code {job.returncode} after a stop "
            "signal; it resumes from its last checkpoint",
            stop_requested(),
        )
    if job.returncode != 0 and "metrics" in payload:  # done, then a signal on the way out
        return payload["metrics"]
    if job.returncode != 0:
        raise RuntimeError(
            f"the torchrun job of trial {trial.number} exited with code {job.returncode}; "
            "its ranks' errors are in this worker's output above"
        )
    return payload["metrics"]


def _orphan_guard(parent: int) -> None:
    """In a torchrun job's process, between fork and exec: SIGTERM when the worker dies (torchrun
    passes it to the ranks, which stop at a step with a checkpoint)."""
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


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
    spec_path: str,
    storage_url: str,
    tracking_uri: str | None,
    workers: int,
    gpus_per_trial: int,
    stop_signal_names: Sequence[str] = ("SIGTERM", "SIGUSR1"),
) -> int:
    """Start ``workers`` local worker processes on one storage (one GPU each when there are GPUs); wait
    for them. A stop signal (``stop_signal_names``) is passed to every worker, which puts its trial
    back in the queue after a checkpoint and exits with ``EXIT_PREEMPTED``. Each worker gets SIGTERM
    if this process dies (``die_with_parent``). Returns the workers' worst exit status: a failure's,
    else ``EXIT_PREEMPTED`` if one was stopped, else 0."""
    signal_numbers(stop_signal_names)
    gpus = _visible_gpus()
    processes: list[subprocess.Popen] = []

    def forward(signum: int) -> None:
        for p in processes:
            if p.poll() is None:
                try:
                    p.send_signal(signum)
                except OSError:
                    pass

    with stop_signals(stop_signal_names, on_signal=forward):
        for index in range(workers):
            command, env = worker_command(spec_path, storage_url, tracking_uri, gpus_per_trial)
            env[PARENT_ENV] = str(os.getpid())
            if gpus:
                per = max(1, gpus_per_trial)
                env["CUDA_VISIBLE_DEVICES"] = ",".join(
                    gpus[(index * per + j) % len(gpus)] for j in range(per)
                )
            processes.append(subprocess.Popen(command, env=env))
        if stop_requested():  # asked to stop while the workers started
            forward(stop_requested())
        try:
            codes = [p.wait() for p in processes]
        except KeyboardInterrupt:
            for p in processes:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in processes:
                p.wait()
            raise
    return worst_exit_status(codes)


def worst_exit_status(codes: Sequence[int]) -> int:
    """A failure's status (the largest, a signal's as 128 + its number), else ``EXIT_PREEMPTED`` if a
    process was stopped, else 0."""
    failures = [128 - code if code < 0 else code for code in codes if code not in (0, EXIT_PREEMPTED)]
    if failures:
        return max(failures)
    return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else 0


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
