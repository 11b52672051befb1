"""Store URLs and stores: no password of an http tracking URL in what a run prints, every form of
PostgreSQL URL the docs show, a full disk while MLflow creates its sqlite store, and MLflow's own
HTTP retries kept within RHO_RETRY_TIMEOUT. Real `rho` processes, a real `mlflow server`, a real
PostgreSQL (RHO_TEST_POSTGRES_URL) and a real full disk (a private tmpfs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from reliability_helpers import (
    REPO,
    MlflowServer,
    env_with,
    error_line,
    free_port,
    in_private_mounts,
    rho,
    tiny_experiment_tree,
)

from harness.study.backend import make_storage
from harness.tracking import (
    HTTP_BACKOFF,
    HTTP_RETRIES,
    HTTP_TIMEOUT,
    RunLogger,
    configure_mlflow_http,
    mlflow_client,
    mlflow_http_settings,
)

SECRET = "s3cr3t-v13w-run"


def write_config(tmp_path: Path, tiny_synth, epochs: int = 1) -> Path:
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"]["epochs"] = epochs
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


# --- item 3: the password of an http tracking URL -----------------------------------------------


@pytest.mark.slow
def test_an_http_tracking_password_is_in_nothing_a_run_prints(tiny_synth, tmp_path):
    """`rho -v pretrain` with MLFLOW_TRACKING_URI=http://user:password@… on a real `mlflow server`:
    the run is logged there, MLflow's "View run … at" line is printed, and the password is in
    nothing printed (stdout, stderr with debug logging)."""
    server = MlflowServer(tmp_path / "server").start()
    try:
        url = server.url.replace("http://", f"http://alice:{SECRET}@")
        config = write_config(tmp_path, tiny_synth)
        out = rho(
            "-v",
            "pretrain",
            str(config),
            "--output",
            str(tmp_path / "run"),
            env=env_with(MLFLOW_TRACKING_URI=url),
        )
        printed = out.stdout + out.stderr
        assert out.returncode == 0, printed[-3000:]
        assert "View run" in out.stdout, "MLflow's link to the run is still printed"
        assert SECRET not in printed, [line for line in printed.splitlines() if SECRET in line]
        runs = MlflowClient(server.url).search_runs(
            [MlflowClient(server.url).get_experiment_by_name("tests").experiment_id]
        )
        assert [r.info.status for r in runs] == ["FINISHED"]
    finally:
        server.stop()


# --- item 4: PostgreSQL URLs without a driver ---------------------------------------------------


@pytest.fixture
def postgres_databases():
    """Two new, empty PostgreSQL databases (an Optuna storage and an MLflow store: both keep an
    ``alembic_version`` table) as ``postgresql+psycopg2://`` URLs; dropped afterwards."""
    url = os.environ.get("RHO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RHO_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    import sqlalchemy

    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    names = [f"rho_urls_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with admin.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    base = sqlalchemy.engine.make_url(url)
    yield [base.set(database=name).render_as_string(hide_password=False) for name in names]
    with admin.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def plain(url: str, scheme: str = "postgresql") -> str:
    """``postgresql+psycopg2://…`` spelled ``SCHEME://…`` (no driver named)."""
    assert url.startswith("postgresql+psycopg2://"), url
    return scheme + url.removeprefix("postgresql+psycopg2")


@pytest.mark.slow
def test_postgresql_urls_without_a_driver_open_optuna_storages_and_mlflow_stores(postgres_databases):
    """`postgresql://` and `postgres://`, as docs/scaling-out.md and the README's `mlflow server`
    line write them, open the Optuna storage and the MLflow store (psycopg2, the installed driver)."""
    optuna_url, mlflow_url = postgres_databases
    for scheme in ("postgresql", "postgres"):
        storage = make_storage(plain(optuna_url, scheme))
        study = optuna.create_study(study_name=f"s-{scheme}", storage=storage, load_if_exists=True)
        study.enqueue_trial({"x": 1.0})
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)][-1] == f"s-{scheme}"
        logger = RunLogger(plain(mlflow_url, scheme), f"e-{scheme}", system_metrics=False)
        logger.log_metrics({"loss": 1.0}, step=0)
        logger.finish()
        client = mlflow_client(plain(mlflow_url, scheme))
        assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert len(optuna.get_all_study_summaries(optuna_url)) == 2, "both spellings reached the same database"


def serves_experiments(port: int, ui: subprocess.Popen, wait: float = 120) -> set[str] | None:
    """The experiment names the MLflow server on ``port`` lists, once it answers (None if it never does)."""
    deadline = time.monotonic() + wait
    while ui.poll() is None and time.monotonic() < deadline:
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                data=json.dumps({"max_results": 10}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return {e["name"] for e in json.load(response)["experiments"]}
        except OSError:
            time.sleep(0.5)
    return None


@pytest.mark.slow
def test_rho_pretrain_and_rho_ui_take_a_postgresql_tracking_uri_without_a_driver(
    tiny_synth, tmp_path, postgres_databases
):
    """A real `rho pretrain` with MLFLOW_TRACKING_URI=postgresql://… (as docs/scaling-out.md's
    `mlflow server` line writes it) logs its run there, and `rho ui --tracking-uri postgres://…`
    serves that store."""
    mlflow_url = postgres_databases[1]
    config = write_config(tmp_path, tiny_synth)
    out = rho(
        "pretrain",
        str(config),
        "--output",
        str(tmp_path / "run"),
        env=env_with(MLFLOW_TRACKING_URI=plain(mlflow_url)),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]

    port = free_port()
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "ui",
            "--port",
            str(port),
            "--tracking-uri",
            plain(mlflow_url, "postgres"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        names = serves_experiments(port, ui)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGINT)
        output = ui.communicate(timeout=60)[0]
    assert names is not None and "tests" in names, output[-3000:]


@pytest.mark.slow
def test_rho_study_run_takes_postgresql_urls_without_a_driver(tiny_synth, tmp_path, postgres_databases):
    """A real `rho study run` with RHO_STORAGE=postgres://… and MLFLOW_TRACKING_URI=postgresql://…
    (the variables docs/scaling-out.md sets, spelled without a driver) finishes, and `rho study
    status` reads it."""
    optuna_url, mlflow_url = postgres_databases
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"]["epochs"] = 1
    spec = tmp_path / "pg.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "pg",
                "experiment": tree,
                "grid": {"data.clips": [1]},
                "objective": {"metric": "loss", "direction": "minimize"},
            }
        )
    )
    env = env_with(RHO_STORAGE=plain(optuna_url, "postgres"), MLFLOW_TRACKING_URI=plain(mlflow_url))
    out = rho("study", "run", str(spec), env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = optuna.load_study(study_name="pg", storage=optuna_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    status = rho("study", "status", "pg", env=env)
    assert status.returncode == 0 and "COMPLETE" in status.stdout, status.stdout + status.stderr[-3000:]


# --- item 5: a full disk while MLflow creates its sqlite store -----------------------------------


def run_in_full_tmpfs(tmp_path: Path, steps: str) -> Path:
    """Run ``steps`` (shell) with ``$FULL``, a 4 MB tmpfs, ``$PY`` (this Python) and ``$OUT`` (a
    folder for outputs) set, in a private mount namespace; ``fill KIB`` leaves KIB KiB free there
    and ``rho NAME ARGS…`` runs `python -m harness ARGS` into $OUT/NAME.{out,err,rc}."""
    full, out = tmp_path / "full", tmp_path / "out"
    full.mkdir()
    out.mkdir()
    script = f"""
FULL={full} OUT={out} PY={sys.executable}
mount -t tmpfs -o size=4m tmpfs $FULL
fill() {{ rm -f $FULL/filler; dd if=/dev/zero of=$FULL/filler bs=64k 2>/dev/null || true; truncate -s -$1K $FULL/filler; }}
rho() {{ name=$1; shift; set +e; $PY -m harness "$@" >$OUT/$name.out 2>$OUT/$name.err; echo $? >$OUT/$name.rc; set -e; }}
{steps}
"""
    result = in_private_mounts(script, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def outcome(out: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(
        [],
        int((out / f"{name}.rc").read_text()),
        (out / f"{name}.out").read_text(),
        (out / f"{name}.err").read_text(),
    )


@pytest.mark.slow
def test_a_full_disk_while_creating_the_mlflow_store_is_one_line_and_a_rerun_starts_clean(
    tiny_synth, tmp_path
):
    """The disk fills while MLflow builds a new sqlite store: one line (status 1) that says the disk
    is full and names the file, no half-made mlflow.db is left; with space freed, the same command
    finishes (before: "table … already exists", a long traceback, until the file was deleted)."""
    config = write_config(tmp_path, tiny_synth)
    full = tmp_path / "full"
    command = f"pretrain {config} --output {tmp_path}/run --tracking-uri sqlite:///{full}/mlflow.db"
    out = run_in_full_tmpfs(
        tmp_path,
        f"""
fill 300
rho first {command}
ls -A $FULL >$OUT/listing
rm $FULL/filler
rho again {command}
""",
    )
    assert "mlflow.db" not in (out / "listing").read_text().split(), "no half-made store is left"
    again = outcome(out, "again")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "checkpoint" in again.stdout
    line = error_line(outcome(out, "first"), 1)
    assert f"could not create the MLflow store {full}/mlflow.db: the disk is full" in line, line
    assert "half-made file was removed" in line and "free disk space" in line, line


@pytest.mark.slow
def test_a_full_disk_on_an_existing_mlflow_store_says_so_in_one_line(tiny_synth, tmp_path, mlflow_uri):
    """An existing sqlite store (holding an experiment and a run) on a disk with a few KiB left:
    each run either finishes or stops in one line (status 1) naming the file and "database or
    disk is full", never SQLAlchemy's autoflush note, and without MLflow's traceback."""
    config = write_config(tmp_path, tiny_synth)
    store = tmp_path / "store.db"
    shutil.copy(mlflow_uri.removeprefix("sqlite:///"), store)
    logger = RunLogger(f"sqlite:///{store}", "tests", system_metrics=False)
    logger.finish()
    full = tmp_path / "full"
    frees = (8, 16, 24, 32, 48)
    steps = "\n".join(
        f"cp {store} $FULL/mlflow.db; fill {kib}; "
        f"rho free{kib} pretrain {config} --output {tmp_path}/run{kib} --tracking-uri sqlite:///$FULL/mlflow.db"
        for kib in frees
    )
    out = run_in_full_tmpfs(tmp_path, steps)
    failed, problems = 0, []
    for kib in frees:
        result = outcome(out, f"free{kib}")
        if result.returncode == 0:
            continue
        errors = [line for line in result.stderr.splitlines() if line.startswith("rho: error:")]
        line = errors[-1] if errors else ""
        if f"MLflow store folder {full} is not writable (No space left on device)" in line:
            continue  # the preflight found no room at all: not what this test is about
        if "database or disk is full" not in line or "autoflush" in line:
            problems.append((kib, "reason", line))
        if f"MLflow store {full}/mlflow.db cannot be written" not in line or "free disk space" not in line:
            problems.append((kib, "message", line))
        failed += 1
        if result.returncode != 1 or len(errors) != 1 or "Traceback" in result.stderr:
            problems.append((kib, "not one line", result.stderr[-2000:]))
    assert not problems, problems
    assert failed, "the store's writes found the disk full for at least one of them"


# --- item 8b: MLflow's own HTTP retries within RHO_RETRY_TIMEOUT --------------------------------


def test_mlflow_http_retries_fit_in_the_retry_budget():
    """One MLflow request with all its own retries (waits and timeouts, worst case) fits in the
    budget; the user's settings are kept; a budget of 0 turns MLflow's retries off."""
    for budget in (1, 2, 5, 30, 120, 600, 3600):
        settings = mlflow_http_settings(budget)
        retries, timeout = int(settings[HTTP_RETRIES]), int(settings[HTTP_TIMEOUT])
        waits = sum(min(120, 2 * 2 ** (n - 1) + 1.0) for n in range(2, retries + 1))
        assert 0 <= retries <= 7 and 1 <= timeout <= 120, (budget, settings)
        assert (retries + 1) * timeout + waits <= budget, (budget, settings)
    assert mlflow_http_settings(120) == {HTTP_TIMEOUT: "60", HTTP_RETRIES: "1"}
    assert mlflow_http_settings(5) == {HTTP_TIMEOUT: "2", HTTP_RETRIES: "1"}
    assert mlflow_http_settings(0) == {HTTP_RETRIES: "0"}
    assert mlflow_http_settings(5, {HTTP_RETRIES: "0"}) == {HTTP_TIMEOUT: "2"}
    assert mlflow_http_settings(10, {HTTP_TIMEOUT: "1"}) == {HTTP_RETRIES: "2"}
    assert mlflow_http_settings(10, {HTTP_TIMEOUT: "1", HTTP_BACKOFF: "0"}) == {HTTP_RETRIES: "5"}
    assert mlflow_http_settings(5, {HTTP_TIMEOUT: "60", HTTP_RETRIES: "2"}) == {}


def test_the_users_mlflow_http_settings_are_kept(monkeypatch):
    """The harness's settings follow the budget; the ones the user set stay as they are."""
    monkeypatch.delenv(HTTP_RETRIES, raising=False)
    monkeypatch.setenv(HTTP_TIMEOUT, "1")
    for budget, retries in (("5", "1"), ("30", "3"), ("0", "0")):
        monkeypatch.setenv("RHO_RETRY_TIMEOUT", budget)
        configure_mlflow_http()
        assert (os.environ[HTTP_TIMEOUT], os.environ[HTTP_RETRIES]) == ("1", retries), budget
    monkeypatch.setenv(HTTP_RETRIES, "5")
    configure_mlflow_http()
    assert os.environ[HTTP_RETRIES] == "5"


class SilentServer:
    """A TCP port that takes connections and never answers (a hung tracking server)."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()


@pytest.mark.slow
def test_an_unreachable_or_hung_tracking_server_is_given_up_within_the_retry_budget(tiny_synth, tmp_path):
    """RHO_RETRY_TIMEOUT=5 and a tracking server that refuses connections, or one that takes them
    and never answers: `rho pretrain` stops in one line (status 1) well within a minute (before:
    MLflow's own retries, 7 with waits up to 120 s and a 120 s timeout each, held it for minutes)."""
    config = write_config(tmp_path, tiny_synth)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env["RHO_RETRY_TIMEOUT"] = "5"
    hung = SilentServer()
    try:
        for name, url in (("refused", f"http://127.0.0.1:{free_port()}"), ("hung", hung.url)):
            started = time.monotonic()
            out = rho(
                "pretrain",
                str(config),
                "--output",
                str(tmp_path / name),
                "--tracking-uri",
                url,
                env=env,
                timeout=120,
            )
            took = time.monotonic() - started
            line = error_line(out, 1)
            assert f"MLflow tracking at {url} is unreachable" in line, line
            assert took < 60, f"{name}: {took:.0f} s"
    finally:
        hung.close()
