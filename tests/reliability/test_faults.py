"""Faults: a killed pretraining, a full disk, a read-only store, a tracking server that goes away
and a PostgreSQL restart, each with real processes, real mounts and real servers."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from mlflow import MlflowClient
from reliability_helpers import (
    REPO,
    MlflowServer,
    env_with,
    error_line,
    in_private_mounts,
    rho,
    same,
    tiny_experiment_tree,
)

from harness.checkpoint import load_checkpoint
from harness.config import build_experiment
from harness.study.storage import ReconnectingRDBStorage, StorageUnavailableError
from harness.tracking import TrackingUnavailableError, tracking_call
from harness.train import pretrain


class Stop(Exception):
    pass


def write_config(tmp_path: Path, tiny_synth, **optim) -> Path:
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"].update(optim)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def files_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- a killed pretraining -----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tiny_synth, tmp_path, mlflow_uri):
    """SIGKILL `rho pretrain --resume` at random moments (mid-epoch, mid-checkpoint) and start it
    again until it finishes: the final checkpoint equals an uninterrupted run's, bit for bit."""
    config = write_config(tmp_path, tiny_synth, epochs=6)
    started = time.monotonic()
    straight = rho(
        "pretrain", str(config), "--output", str(tmp_path / "straight"), "--tracking-uri", mlflow_uri
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    duration = time.monotonic() - started
    history = load_checkpoint(tmp_path / "straight" / "last.pt")["history"]
    epoch_s = sum(h["epoch_time"] for h in history) / len(history)  # kills land within the next epoch
    # The first kill lands in the start-up (before the first epoch ends: a random moment of the
    # whole run could fall after the last epoch when this run goes faster than the straight one,
    # a busy machine's usual case); the others a random part of an epoch after a new checkpoint.
    startup = max(0.5, duration - sum(h["epoch_time"] for h in history))
    rng = random.Random(int(os.environ.get("RHO_TEST_KILL_SEED", "8")))
    killed_at: list[int] = []
    output = tmp_path / "killed"
    for attempt in range(12):
        process = subprocess.Popen(
            [sys.executable, "-m", "harness", "pretrain", str(config), "--resume"]
            + ["--output", str(output), "--tracking-uri", mlflow_uri],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if len(killed_at) < 4:
            # wait for a new checkpoint (or a random moment of the start-up), then a random part of an epoch
            before = (output / "last.pt").stat().st_mtime_ns if (output / "last.pt").is_file() else None
            deadline = time.monotonic() + (rng.uniform(0.2, 0.9) * startup if attempt == 0 else 120)
            while time.monotonic() < deadline and process.poll() is None:
                now = (output / "last.pt").stat().st_mtime_ns if (output / "last.pt").is_file() else None
                if attempt and now != before:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.9) * (epoch_s if attempt else min(epoch_s, startup)))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                epoch = load_checkpoint(output / "last.pt")["epoch"] if (output / "last.pt").is_file() else 0
                killed_at.append(epoch)  # the checkpoint on disk is readable after every kill
                continue
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        break
    assert len([e for e in killed_at if 0 < e < 6]) >= 2, f"too few kills landed mid-training: {killed_at}"
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(output / "last.pt")
    for key in ("method", "optimizer", "epoch", "step", "rng", "config_hash"):
        assert same(a[key], b[key]), f"{key} differs after kills at epochs {killed_at}"
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert not list(output.glob(".*.tmp")), "temp files of killed writers are removed"
    run = MlflowClient(mlflow_uri).get_run(b["run_id"])
    assert run.info.status == "FINISHED"


def test_a_run_killed_before_its_first_checkpoint_is_resumed_not_left_running(
    tiny_synth, tmp_path, mlflow_uri
):
    """SIGKILL `rho pretrain` as soon as its MLflow run exists, before any checkpoint: `--resume`
    continues that run (from scratch), so no run is left RUNNING forever."""
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["backbone"]["width"] = 32  # a first epoch of seconds, so the kill lands before its checkpoint
    tree["data"].update(crop=32, frames=4, stride=1)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tree))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "harness", "pretrain", str(config), "--resume", "--output", str(output)]
    process = subprocess.Popen(
        command + ["--tracking-uri", mlflow_uri], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (output / "run.json").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (output / "run.json").is_file(), process.stderr.read()[-3000:]
    assert not (output / "last.pt").exists(), "the kill came after the first checkpoint: make epoch 1 longer"
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests").experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "RUNNING"  # what a killed process leaves behind

    again = rho(*command[3:], "--tracking-uri", mlflow_uri)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stopped before its first checkpoint" in again.stdout
    (run,) = client.search_runs([experiment])  # the same run, not a second one
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert load_checkpoint(output / "last.pt")["run_id"] == run.info.run_id


# --- a full disk and a read-only store -----------------------------------------------------------


@pytest.mark.slow
def test_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_last_checkpoint(
    tiny_synth, tmp_path, mlflow_uri
):
    """The checkpoint folder is a tiny tmpfs that fills up: `rho pretrain --resume` trains an epoch,
    cannot write its checkpoint, says so in one line (status 1); the previous checkpoint is intact,
    no temp file is left, the MLflow run is FAILED with the reason, and a later resume finishes."""
    config = write_config(tmp_path, tiny_synth, epochs=3)
    exp = build_experiment(yaml.safe_load(config.read_text()))
    first = tmp_path / "first"

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        pretrain(
            exp, output=first, tracking_uri=mlflow_uri, on_epoch_end=stop_after_first, print_progress=False
        )
    size = (first / "last.pt").stat().st_size
    full, out = tmp_path / "full", tmp_path / "out"
    full.mkdir()
    out.mkdir()
    free_kib = max(16, size // 2048)  # room for the preflight probe, not for a checkpoint
    script = f"""
mount -t tmpfs -o size=8m tmpfs {full}
cp {first}/last.pt {full}/last.pt
dd if=/dev/zero of={full}/filler bs=64k 2>/dev/null || true
truncate -s -{free_kib}K {full}/filler
set +e
{sys.executable} -m harness pretrain {config} --resume --output {full} --tracking-uri {mlflow_uri} \
    >{out}/stdout 2>{out}/stderr
echo $? >{out}/rc
set -e
ls -A {full} >{out}/listing
cp {full}/last.pt {out}/last.pt
"""
    result = in_private_mounts(script)
    assert result.returncode == 0, result.stderr
    stderr = (out / "stderr").read_text()
    fake = subprocess.CompletedProcess(
        [], int((out / "rc").read_text()), (out / "stdout").read_text(), stderr
    )
    line = error_line(fake, 1)
    assert f"could not write checkpoint {full}/last.pt (No space left on device)" in line, line
    assert "the previous checkpoint is intact" in line and "resume" in line
    assert "resuming" in fake.stdout and "after epoch 1" in fake.stdout, "it trained before the disk was full"
    assert (out / "listing").read_text().split() == ["filler", "last.pt"], "no temp file is left behind"
    assert (out / "last.pt").read_bytes() == (first / "last.pt").read_bytes(), "the last checkpoint is intact"
    run = MlflowClient(mlflow_uri).get_run(load_checkpoint(out / "last.pt")["run_id"])
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["failure_reason"]
    resumed = pretrain(exp, output=out, tracking_uri=mlflow_uri, resume=True, print_progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


@pytest.mark.slow
def test_read_only_mlruns_fails_before_compute_and_changes_nothing(tiny_synth, tmp_path, mlflow_uri):
    """mlruns/ on a read-only mount: `rho pretrain` and `rho study run` stop in one line (status 1)
    naming the folder, before any compute, and no byte under mlruns/ changes."""
    store = tmp_path / "mlruns"
    store.mkdir()
    (store / "mlflow.db").write_bytes(Path(mlflow_uri.removeprefix("sqlite:///")).read_bytes())
    optuna.create_study(study_name="other", storage=f"sqlite:///{store}/optuna.db")
    (store / "checkpoints").mkdir()
    config = write_config(tmp_path, tiny_synth, epochs=1)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "ro", "experiment": str(config), "grid": {"data.clips": [1]}}))
    before = files_digest(store)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    py = f"{sys.executable} -m harness"
    script = f"""
mount --bind {store} {store}
mount -o remount,bind,ro {store}
run() {{ set +e; "$@" >{outputs}/$name.out 2>{outputs}/$name.err; echo $? >{outputs}/$name.rc; set -e; }}
name=checkpoints run {py} pretrain {config} --output {store}/checkpoints/run --tracking-uri {mlflow_uri}
name=tracking run {py} pretrain {config} --output {tmp_path}/run --tracking-uri sqlite:///{store}/mlflow.db
name=study run {py} study run {spec} --storage sqlite:///{store}/optuna.db --tracking-uri {mlflow_uri}
"""
    result = in_private_mounts(script)
    assert result.returncode == 0, result.stderr
    expected = {
        "checkpoints": f"checkpoint folder (runtime.output_dir) {store}/checkpoints/run is not writable",
        "tracking": f"MLflow store folder {store} is not writable",
        "study": f"Optuna storage folder {store} is not writable",
    }
    for name, fragment in expected.items():
        fake = subprocess.CompletedProcess(
            [],
            int((outputs / f"{name}.rc").read_text()),
            (outputs / f"{name}.out").read_text(),
            (outputs / f"{name}.err").read_text(),
        )
        line = error_line(fake, 1)
        assert fragment in line and "Read-only file system" in line and "writable folder" in line, line
        assert "epoch" not in fake.stdout, "nothing was computed"
    assert files_digest(store) == before, "nothing under mlruns/ changed"
    assert not (tmp_path / "run").exists()


# --- the MLflow tracking server goes away -------------------------------------------------------


def write_spec(tmp_path: Path, tiny_synth, name: str, epochs: int = 4, **extra) -> Path:
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"]["epochs"] = epochs
    spec = {
        "name": name,
        "experiment": tree,
        "grid": {"data.clips": [1, 2, 3]},
        "objective": {"metric": "loss", "direction": "minimize"},
        "limits": {"heartbeat_interval": 1, "grace_period": 30, "max_retries": 2},
    }
    spec.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def complete_trials(sqlite_path: Path) -> int:
    if not sqlite_path.is_file():
        return 0
    with sqlite3.connect(sqlite_path, timeout=30) as db:
        try:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def study_runs(tracking_uri: str, name: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("rho.role") != "study"]


def check_each_point_finished_once(storage: str, tracking_uri: str, name: str, points: int):
    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == points and len({t.user_attrs["rho.key"] for t in complete}) == points
    children = study_runs(tracking_uri, name)
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
    assert not [r for r in children if r.info.status == "RUNNING"], "no run is left RUNNING"
    return study


def start_study(spec: Path, storage: str, tracking_uri: str, env: dict, workers: int = 1) -> subprocess.Popen:
    command = [sys.executable, "-m", "harness", "study", "run", str(spec), "--storage", storage]
    command += ["--tracking-uri", tracking_uri, "--workers", str(workers)]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def study_against_server(tmp_path: Path, tiny_synth, name: str, retry_timeout: str):
    """A started tracking server, a sqlite study storage, the spec ``name`` and the environment
    of a study run whose MLflow calls retry for ``retry_timeout`` seconds."""
    server = MlflowServer(tmp_path / "server").start()
    storage_file = tmp_path / "optuna.db"
    env = env_with(
        RHO_RETRY_TIMEOUT=retry_timeout, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"
    )
    return server, storage_file, f"sqlite:///{storage_file}", write_spec(tmp_path, tiny_synth, name), env


@pytest.mark.slow
def test_tracking_server_gone_mid_study_fails_clearly_and_a_rerun_finishes(tiny_synth, tmp_path):
    """The tracking server dies after the first trial: the worker retries with growing waits, then
    stops in one line (status 1); the finished trial and its run are kept, the trial in flight is
    FAILED with the reason, the rest wait. With the server back, a re-run finishes every point once."""
    server, storage_file, storage, spec, env = study_against_server(tmp_path, tiny_synth, "gone", "5")
    try:
        study = start_study(spec, storage, server.url, env)
        checkpoints = tmp_path / "checkpoints" / "gone"
        wait_for(
            lambda: complete_trials(storage_file) >= 1 and len(list(checkpoints.glob("*/last.pt"))) >= 2,
            300,
            "the first trial and a checkpoint of the second",
        )
        server.stop()
        stdout, stderr = study.communicate(timeout=300)
        line = error_line(subprocess.CompletedProcess([], study.returncode, stdout, stderr), 1)
        assert f"MLflow tracking at {server.url} is unreachable" in line and "re-run" in line, line
        waits = [float(w.split(" in ")[-1].split()[0]) for w in stderr.splitlines() if "; retry " in w]
        assert len(waits) >= 2 and waits[1] > waits[0], f"no backoff: {waits}"
        trials = optuna.load_study(study_name="gone", storage=storage).trials
        states = [t.state for t in trials]
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
        reasons = [(t.number, t.state.name, t.user_attrs.get("failure_reason")) for t in trials]
        assert len(done) >= 1 and len(failed) == 1, (reasons, stdout[-3000:], stderr[-3000:])
        assert "TrackingUnavailableError" in failed[0].user_attrs["failure_reason"]
        assert states.count(optuna.trial.TrialState.WAITING) == 3 - len(done) - 1, "the worker stopped"
        kept = {r.info.run_id: r.info.status for r in study_runs(server.backend, "gone")}
        assert all(kept[t.user_attrs["mlflow_run_id"]] == "FINISHED" for t in done), "finished runs are kept"

        server.start()
        again = rho(
            "study", "run", str(spec), "--storage", storage, "--tracking-uri", server.url, timeout=600
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "(resuming)" in again.stdout, "the failed trial resumed from its checkpoint"
        final = check_each_point_finished_once(storage, server.url, "gone", 3)
        key = failed[0].user_attrs["rho.key"]
        retried = next(
            t for t in final.trials if t.state.name == "COMPLETE" and t.user_attrs["rho.key"] == key
        )
        run = MlflowClient(server.url).get_run(retried.user_attrs["mlflow_run_id"])
        assert run.data.tags["retry_of_run"] == failed[0].user_attrs["mlflow_run_id"]
    finally:
        server.stop()


@pytest.mark.slow
def test_tracking_server_restart_mid_study_is_ridden_out(tiny_synth, tmp_path):
    """The tracking server is down for a few seconds mid-study: calls are retried with backoff
    and the study finishes as if nothing happened, one FINISHED run per trial."""
    server, storage_file, storage, spec, env = study_against_server(tmp_path, tiny_synth, "blip", "180")
    try:
        study = start_study(spec, storage, server.url, env)
        wait_for(lambda: complete_trials(storage_file) >= 1, 300, "the first trial")
        server.stop()
        time.sleep(3)
        server.start()
        stdout, stderr = study.communicate(timeout=600)
        assert study.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert "; retry " in stderr and server.url in stderr, "the outage was seen and retried"
        check_each_point_finished_once(storage, server.url, "blip", 3)
    finally:
        server.stop()


def test_unreachable_stores_are_retried_with_growing_waits_then_fail_in_one_line(monkeypatch, caplog):
    """A closed port for MLflow and for PostgreSQL: retries at 0.5, 1, 2 s, then one clear error."""
    monkeypatch.setenv("RHO_RETRY_TIMEOUT", "4")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from reliability_helpers import free_port

    port = free_port()
    with caplog.at_level(logging.WARNING, logger="harness.retry"):
        started = time.monotonic()
        with pytest.raises(
            TrackingUnavailableError, match=f"MLflow tracking at http://127.0.0.1:{port} is unreach"
        ):
            tracking_call(
                f"http://127.0.0.1:{port}",
                "search",
                lambda: MlflowClient(f"http://127.0.0.1:{port}").search_experiments(),
            )
        elapsed = time.monotonic() - started
    waits = [r.getMessage().split(" in ")[-1] for r in caplog.records if "; retry " in r.getMessage()]
    assert waits == ["0.5 s", "1.0 s", "2.0 s"] and 3.4 <= elapsed < 8, (waits, elapsed)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.retry"):
        with pytest.raises(StorageUnavailableError, match="the study storage .* is unreachable"):
            ReconnectingRDBStorage(f"postgresql+psycopg2://rho:pw@127.0.0.1:{port}/rho")
    # Each refused connection costs a moment of its own, so a loaded machine may reach the
    # 4 s deadline one retry early; the waits must still be the doubling series from 0.5 s.
    waits = [r.getMessage().split(" in ")[-1] for r in caplog.records if "; retry " in r.getMessage()]
    assert len(waits) >= 2 and waits == ["0.5 s", "1.0 s", "2.0 s"][: len(waits)], waits


def test_a_trial_left_running_without_a_heartbeat_is_failed_requeued_and_run(
    tiny_synth, tmp_path, mlflow_uri
):
    """A database connection cut just after a worker's "WAITING → RUNNING" commit leaves a RUNNING
    trial that no worker runs and that never records a heartbeat, so Optuna never calls it stale
    (CI saw it: 3 of 4 points finished and the study exited 0). Once older than the grace period
    it is failed with a reason and re-queued; every point finishes once."""
    from harness.study import load_study
    from harness.study.backend import open_study
    from harness.study.lifecycle import prepare_study

    name = "orphan"
    limits = {"heartbeat_interval": 1, "grace_period": 4, "max_retries": 2}
    path = write_spec(tmp_path, tiny_synth, name, epochs=1, grid={"data.clips": [1, 2]}, limits=limits)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_study(path)
    prepare_study(spec, url, mlflow_uri)
    study = open_study(spec, ReconnectingRDBStorage(url, heartbeat_interval=1, grace_period=4))
    orphan = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    # What the lost reply leaves: the pop committed, the worker moved on.
    assert study._storage.set_trial_state_values(orphan._trial_id, optuna.trial.TrialState.RUNNING)

    run = start_study(path, url, mlflow_uri, env_with())
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    study = check_each_point_finished_once(url, mlflow_uri, name, 2)
    failed = study.trials[orphan.number]
    assert failed.state == optuna.trial.TrialState.FAIL
    assert "never recorded a heartbeat" in failed.user_attrs["failure_reason"]
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert [t.state for t in retries] == [optuna.trial.TrialState.COMPLETE]
    assert retries[0].user_attrs["rho.key"] == orphan.user_attrs["rho.key"], "the same point was run"
    assert "failure_reason" not in retries[0].user_attrs, "the retry does not carry the orphan's failure"


# --- PostgreSQL restarts during a study -----------------------------------------------------------


def postgres_server() -> tuple[str, list[str], list[str]]:
    """The CI PostgreSQL server (.ci/postgres.sh): its URL and the commands that stop and start it."""
    url, data = os.environ.get("RHO_TEST_POSTGRES_URL"), os.environ.get("RHO_TEST_POSTGRES_DATA")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not url or not data or not bins or os.geteuid() != 0:
        pytest.skip(
            "needs the PostgreSQL server of .ci/run (RHO_TEST_POSTGRES_URL/_DATA) and root for pg_ctl"
        )
    port = sqlalchemy.engine.make_url(url).port
    pg_ctl = ["runuser", "-u", "postgres", "--", f"{bins[-1]}/pg_ctl", "-D", f"{data}/db", "-w"]
    stop = [*pg_ctl, "-m", "immediate", "stop"]
    start = [
        *pg_ctl,
        "-l",
        f"{data}/log",
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        "start",
    ]
    return url, stop, start


@pytest.mark.slow
def test_postgresql_restart_during_a_study(tiny_synth, tmp_path, mlflow_uri):
    """Two workers on PostgreSQL; the server is stopped (immediate: connections cut) for 4 s after
    the first trial and started again. Storage calls are retried and reconnect; every point
    finishes once, with one FINISHED MLflow run each."""
    url, stop, start = postgres_server()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    spec = write_spec(
        tmp_path,
        tiny_synth,
        "pgrestart",
        epochs=5,
        grid={"data.clips": [1, 2], "method.temperature": [0.1, 0.5]},
        pruner={
            "type": "median",
            "metric": "loss",
            "warmup_epochs": 1000,
        },  # reports every epoch, never prunes
    )

    def complete() -> int:
        try:
            with engine.connect() as connection:
                query = "SELECT count(*) FROM trials WHERE state = 'COMPLETE'"
                return connection.execute(sqlalchemy.text(query)).scalar()
        except sqlalchemy.exc.SQLAlchemyError:
            return 0

    study = start_study(spec, url, mlflow_uri, env_with(RHO_RETRY_TIMEOUT="120"), workers=2)
    try:
        wait_for(lambda: complete() >= 1, 300, "the first trial")
        engine.dispose()
        subprocess.run(stop, check=True, capture_output=True, timeout=60)
        time.sleep(4)
    finally:
        subprocess.run(start, check=True, capture_output=True, timeout=60)
    stdout, stderr = study.communicate(timeout=600)
    assert study.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "Optuna storage" in stderr and "; retry " in stderr, "the restart was seen and ridden out"
    assert sqlalchemy.engine.make_url(url).password not in stdout + stderr, "URLs are redacted"
    check_each_point_finished_once(url, mlflow_uri, "pgrestart", 4)
    engine.dispose()
