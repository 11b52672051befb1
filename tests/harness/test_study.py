"""Study runner: real Optuna storages (sqlite, PostgreSQL), real MLflow stores (sqlite, a server), real workers."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree

from harness.checkpoint import load_checkpoint
from harness.config import ConfigError
from harness.study import load_study
from harness.study.attrs import ATTR_PARENT

REPO = Path(__file__).resolve().parents[2]


def write_spec(tmp_path, tiny_synth, name="grid", **extra) -> Path:
    spec = {
        "name": name,
        "experiment": tiny_experiment_tree(tiny_synth, tmp_path),
        "grid": {"data.clips": [1, 2], "method.temperature": [0.1, 0.5]},
        "seeds": [0],
        "objective": {"metric": "loss", "direction": "minimize"},
        "limits": {"heartbeat_interval": 1, "grace_period": 4, "max_retries": 2},
        "table": {"rows": "method.temperature", "columns": "data.clips"},
    }
    spec.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def rho(*args, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=REPO, env=env, capture_output=True, text=True, **kwargs
    )


def run_study(spec: Path, storage: str, tracking_uri: str, workers: int = 1):
    return rho(
        "study",
        "run",
        str(spec),
        "--workers",
        str(workers),
        "--storage",
        storage,
        "--tracking-uri",
        tracking_uri,
        timeout=600,
    )


def check_complete(storage: str, tracking_uri: str, name: str, expected: int):
    study = optuna.load_study(study_name=name, storage=storage)
    real = [
        t
        for t in study.trials
        if not t.user_attrs.get("rho.surplus") and not t.user_attrs.get("rho.duplicate")
    ]
    complete = [t for t in real if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [t.user_attrs["rho.key"] for t in complete]
    assert len(complete) == expected and len(set(keys)) == expected, [
        (t.number, t.state, t.user_attrs) for t in real
    ]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rho.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs[ATTR_PARENT]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == expected
    assert {r.info.run_id for r in finished} == {t.user_attrs["mlflow_run_id"] for t in complete}
    for run in finished:
        assert {"study", "trial", "seed", "swept.data.clips"} <= set(run.data.tags)
        tags = run.data.tags  # the UI tells trials apart by name: number, swept values, seed
        assert run.info.run_name.startswith(f"{name}-t{tags['trial']} "), run.info.run_name
        assert f"data.clips={tags['swept.data.clips']}" in run.info.run_name
        assert f"seed={tags['seed']}" in run.info.run_name
    assert len({r.info.run_name for r in finished}) == expected
    return study, runs


def test_grid_study_with_two_workers_runs_each_point_once(tiny_synth, tmp_path, mlflow_uri):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(tmp_path, tiny_synth)
    out = run_study(spec, storage, mlflow_uri, workers=2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check_complete(storage, mlflow_uri, "grid", 4)
    assert "4 complete" in out.stdout and "loss (mean ± std over seeds)" in out.stdout
    again = rho("study", "run", str(spec), "--storage", storage, "--tracking-uri", mlflow_uri, timeout=600)
    assert again.returncode == 0 and "0 newly queued" in again.stdout and "== trial" not in again.stdout
    status = rho("study", "status", "grid", "--storage", storage)
    assert status.returncode == 0 and status.stdout.count("COMPLETE") == 4
    listing = rho("study", "list", "--storage", storage)
    assert "grid" in listing.stdout


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny_synth, tmp_path, mlflow_uri):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(
        tmp_path, tiny_synth, name="failing", grid={"optim.lr": [0.05, 1.0e30], "data.clips": [2]}
    )
    out = rho("study", "run", str(spec), "--storage", storage, "--tracking-uri", mlflow_uri, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="failing", storage=storage)
    states = {t.params["optim.lr"]: t for t in study.trials}
    assert states[0.05].state == optuna.trial.TrialState.COMPLETE
    assert states[1e30].state == optuna.trial.TrialState.FAIL
    assert "NonFiniteLossError" in states[1e30].user_attrs["failure_reason"]
    run = MlflowClient(mlflow_uri).get_run(states[1e30].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"


def test_a_killed_worker_is_resumed_from_its_checkpoint(tiny_synth, tmp_path, mlflow_uri):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"]["epochs"] = 6
    spec = write_spec(tmp_path, tiny_synth, name="killed", experiment=tree, grid={"data.clips": [2]})
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "study",
            "run",
            str(spec),
            "--storage",
            storage,
            "--tracking-uri",
            mlflow_uri,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoints = tmp_path / "checkpoints" / "killed"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(checkpoints.glob("*/last.pt")), "the trial never wrote a checkpoint"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    out = rho("study", "run", str(spec), "--storage", storage, "--tracking-uri", mlflow_uri, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "(resuming)" in out.stdout and "resuming" in out.stdout
    study, runs = check_complete(storage, mlflow_uri, "killed", 1)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1, "the killed attempt is marked failed"
    retried = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE][0]
    run = MlflowClient(mlflow_uri).get_run(retried.user_attrs["mlflow_run_id"])
    assert int(run.data.tags["resumed_from_epoch"]) >= 1
    assert run.data.tags["retry_of_run"] == failed[0].user_attrs["mlflow_run_id"]
    dead = MlflowClient(mlflow_uri).get_run(failed[0].user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED"


def test_a_changed_spec_is_refused_until_the_study_is_deleted(tiny_synth, tmp_path, mlflow_uri):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(tmp_path, tiny_synth, name="changing", grid={"data.clips": [2]})
    first = run_study(spec, storage, mlflow_uri)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / "checkpoints" / "changing"
    assert list(checkpoints.glob("*/last.pt"))

    # A machine-specific key (workers) is not a change: the finished study resumes as it is.
    same = write_spec(
        tmp_path, tiny_synth, name="changing", grid={"data.clips": [2]}, overrides={"data.workers": 0}
    )
    assert run_study(same, storage, mlflow_uri).returncode == 0
    check_complete(storage, mlflow_uri, "changing", 1)

    grown = write_spec(tmp_path, tiny_synth, name="changing", grid={"data.clips": [2, 1]})
    refused = run_study(grown, storage, mlflow_uri)  # Optuna cannot extend a swept key's choices
    assert refused.returncode == 2 and "created from another spec" in refused.stderr

    # (each spec overwrites the file of the one before: they share the study's name)
    changed = write_spec(
        tmp_path, tiny_synth, name="changing", grid={"data.clips": [2]}, overrides={"optim.lr": 0.01}
    )
    refused = run_study(changed, storage, mlflow_uri)
    assert refused.returncode == 2
    assert "created from another spec" in refused.stderr and f"rho study delete {changed}" in refused.stderr
    study = optuna.load_study(study_name="changing", storage=storage)
    assert len(study.trials) == 1, "nothing ran or was queued"

    deleted = rho("study", "delete", str(changed), "--storage", storage)
    assert deleted.returncode == 0, deleted.stderr
    assert "(1 trial)" in deleted.stdout and not checkpoints.exists()
    again = run_study(changed, storage, mlflow_uri)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="changing", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    run = MlflowClient(mlflow_uri).get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.data.params["optim.lr"] == "0.01"


def test_bad_specs_fail_before_any_trial(tiny_synth, tmp_path):
    with pytest.raises(ConfigError, match="grid.data.clips = "):
        load_study(write_spec(tmp_path, tiny_synth, grid={"data.clips": []}))
    with pytest.raises(ConfigError, match="did you mean seeds"):
        load_study(write_spec(tmp_path, tiny_synth, seed=[1]))
    with pytest.raises(ConfigError, match=r"data.clips = 0 .*in the trial data.clips=0"):
        load_study(write_spec(tmp_path, tiny_synth, grid={"data.clips": [2, 0]}))
    with pytest.raises(ConfigError, match="search.params.optim.lr"):
        load_study(
            write_spec(
                tmp_path,
                tiny_synth,
                search={"n_trials": 2, "params": {"optim.lr": {"type": "float", "low": 1, "high": 0}}},
            )
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_study_against_an_mlflow_tracking_server(tiny_synth, tmp_path, mlflow_server):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(tmp_path, tiny_synth, name="served", grid={"data.clips": [1, 2]})
    out = rho("study", "run", str(spec), "--storage", storage, "--tracking-uri", mlflow_server, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check_complete(storage, mlflow_server, "served", 2)


def run_watching_children(args: list[str], tmp_path: Path, timeout: float = 600):
    """Run ``rho ARGS``; also return the argv of every process it started, sampled while it ran."""
    import psutil

    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, stdout=out, stderr=err)
        argvs, deadline = set(), time.monotonic() + timeout
        own = (sys.executable, "-m", "harness", *args)
        while proc.poll() is None and time.monotonic() < deadline:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    argv = tuple(child.cmdline())
                except psutil.Error:
                    continue
                # a child caught between fork and exec still shows rho's own command line
                # (which holds what the test passed it); what it runs shows after its exec
                if argv != own:
                    argvs.add(argv)
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        returncode = proc.wait()
    return subprocess.CompletedProcess(args, returncode, stdout.read_text(), stderr.read_text()), argvs


def test_worker_argv_holds_no_store_url():
    from harness.study import worker_command

    storage, tracking = "postgresql://rho:s3cret@db:5432/optuna", "http://user:t0ken@mlflow:5000"
    command, env = worker_command("studies/demo.yaml", storage, tracking, gpus_per_trial=2)
    assert not any("s3cret" in arg or "t0ken" in arg for arg in command), command
    assert env["RHO_STORAGE"] == storage and env["MLFLOW_TRACKING_URI"] == tracking
    assert command[-2:] == ["--gpus-per-trial", "2"]


def test_two_workers_share_a_postgresql_storage(tiny_synth, tmp_path, mlflow_uri, postgres_url):
    spec = write_spec(tmp_path, tiny_synth, name="pg")
    args = [
        "study",
        "run",
        str(spec),
        "--workers",
        "2",
        "--storage",
        postgres_url,
        "--tracking-uri",
        mlflow_uri,
    ]
    out, argvs = run_watching_children(args, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import sqlalchemy

    password = sqlalchemy.engine.make_url(postgres_url).password
    assert password and password not in out.stdout + out.stderr, "storage URLs are printed redacted"
    workers = [argv for argv in argvs if "worker" in argv]
    assert workers, argvs  # the workers were seen, so the next check is not vacuous
    leaked = [argv for argv in argvs if any(password in arg for arg in argv)]
    assert not leaked, f"a child's argv shows the password: {leaked}"
    check_complete(postgres_url, mlflow_uri, "pg", 4)


def test_gpus_per_trial_runs_each_trial_as_a_two_rank_torchrun_job_and_prunes_it(
    tiny_synth, tmp_path, mlflow_uri
):
    # On CPU the same path runs each trial as two gloo ranks; the ranks find the MLflow store in
    # their environment, not in argv, and log one child run under the study's parent run. Rank 0
    # reports each epoch to Optuna: with the epoch's mean lr as the pruned metric (maximised), the
    # third trial (lowest lr) is below the median of the first two after epoch 1, and both ranks stop.
    storage = f"sqlite:///{tmp_path}/optuna.db"
    spec = write_spec(
        tmp_path, tiny_synth, name="ddp", grid={"data.clips": [2], "optim.lr": [0.05, 0.04, 0.01]},
        objective={"metric": "lr", "direction": "maximize"},
        pruner={"type": "median", "metric": "lr", "warmup_epochs": 1},
    )  # fmt: skip
    out = rho(
        "study", "run", str(spec), "--gpus-per-trial", "2", "--storage", storage,
        "--tracking-uri", mlflow_uri, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study, runs = check_complete(storage, mlflow_uri, "ddp", 2)
    child = next(r for r in runs if r.data.tags.get("rho.role") != "study")
    assert child.data.tags["world_size"] == "2"
    config = yaml.safe_load(next((tmp_path / "checkpoints").rglob("trial_config.yaml")).read_text())
    assert config["runtime"]["tracking_uri"] is None  # the store URL is not written to disk

    first, second, third = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in (first, second)] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(first.intermediate_values) == [1, 2]  # reported by rank 0 of the torchrun job
    assert third.state == optuna.trial.TrialState.PRUNED, third.user_attrs
    assert sorted(third.intermediate_values) == [1]
    assert "pruned after epoch 1" in third.user_attrs["failure_reason"]
    assert third.user_attrs["pruned_at_epoch"] == 1
    pruned_run = MlflowClient(mlflow_uri).get_run(third.user_attrs["mlflow_run_id"])
    assert pruned_run.info.status == "KILLED", pruned_run.info.status  # not FAILED: it was stopped
    assert "pruned after epoch 1" in pruned_run.data.tags["pruned"]
    assert pruned_run.data.tags["pruned_at_epoch"] == "1" and "failure_reason" not in pruned_run.data.tags
    history = load_checkpoint(tmp_path / "checkpoints" / "ddp" / third.user_attrs["rho.key"] / "last.pt")[
        "history"
    ]
    assert [record["epoch"] for record in history] == [1], "both ranks stopped after epoch 1"


def test_validating_a_spec_costs_the_same_per_point_at_any_grid_size(monkeypatch):
    """A 1,000-point grid validates every point's experiment: the costly lookups behind it (type hints
    of the config classes, the plugin entry points) are made a fixed number of times, not per point."""
    import importlib.metadata
    import typing

    import yaml

    import harness.plugins
    from harness.resources import shipped
    from harness.study.spec import parse_study

    calls = {"hints": 0, "entry_points": 0}
    real_hints, real_entry_points = typing.get_type_hints, importlib.metadata.entry_points

    def hints(*args, **kwargs):
        calls["hints"] += 1
        return real_hints(*args, **kwargs)

    def entry_points(*args, **kwargs):
        calls["entry_points"] += 1
        return real_entry_points(*args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", hints)
    monkeypatch.setattr(harness.plugins, "entry_points", entry_points)
    raw = yaml.safe_load(shipped("studies/demo.yaml").read_text())
    raw["experiment"] = str(shipped("studies/experiments/demo.yaml"))
    counts = []
    for points in (8, 32):
        raw["grid"] = {"data.clips": [1, 2, 3, 4], "optim.lr": [1e-4 * (i + 1) for i in range(points // 4)]}
        before = dict(calls)
        assert len(parse_study(raw, None, check_files=False).points()) == points + len(raw["baselines"])
        counts.append({k: calls[k] - before[k] for k in calls})
    assert counts[1]["hints"] <= counts[0]["hints"], counts  # nothing new to look up for more points
    assert counts[1]["entry_points"] <= counts[0]["entry_points"] <= 4, counts


def test_study_list_summaries_equal_optunas_in_a_fixed_number_of_queries(tmp_path):
    """``rho study list`` counts with aggregate queries: the same names, trial counts, starts and best
    values as ``optuna.get_all_study_summaries`` (which loads every trial), and the same number of
    SQL statements for 10 and for 200 trials."""
    import optuna
    import sqlalchemy

    from harness.study.backend import make_storage, study_summaries

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    statements = []
    for trials in (10, 200):
        maximize = optuna.create_study(study_name=f"max{trials}", storage=url, direction="maximize")
        maximize.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
        minimize = optuna.create_study(study_name=f"min{trials}", storage=url, direction="minimize")
        minimize.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        minimize.ask()  # one running
        pruned = minimize.ask()
        minimize.tell(pruned, state=optuna.trial.TrialState.PRUNED)
        optuna.create_study(study_name=f"empty{trials}", storage=url)
        storage = make_storage(url)
        executed = []
        sqlalchemy.event.listen(
            storage.engine, "before_cursor_execute", lambda *a, into=executed: into.append(a[2])
        )
        mine = study_summaries(storage)
        statements.append(len(executed))
        theirs = optuna.get_all_study_summaries(url, include_best_trial=True)
        assert [m["name"] for m in mine] == [s.study_name for s in theirs]
        for m, s in zip(mine, theirs, strict=True):
            assert m["trials"] == s.n_trials and m["started"] == s.datetime_start
            assert m["best"] == (s.best_trial.value if s.best_trial else None)
    assert statements[0] == statements[1] <= 4, statements
