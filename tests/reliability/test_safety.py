"""Safety: no code runs from a checkpoint or a YAML file, `rho ui` stays on this machine, manifest
rows stay inside the data root unless allowed, and no password reaches MLflow, logs or output."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import torch
import yaml
from mlflow import MlflowClient
from reliability_helpers import REPO, free_port, rho, tiny_experiment_tree
from tiny_data import write_tiny_knn_benchmark

from harness.checkpoint import CheckpointError, load_checkpoint
from harness.cli import main
from harness.config import ConfigError, load_experiment
from harness.data import write_manifest
from harness.eval import FeatureCache, load_benchmark
from harness.study import load_study
from harness.study.storage import ReconnectingRDBStorage, StorageUnavailableError
from harness.tracking import RunLogger, TrackingUnavailableError, tracking_call


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_and_feature_caches_never_run_pickled_code(tiny_synth, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "last.pt"
    torch.save({"format": 1, "config_hash": "x", "method": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    benchmark = write_tiny_knn_benchmark(tiny_synth, tmp_path)  # valid, so the checkpoint is what is refused
    code = main(["evaluate", str(evil), "--benchmark", str(benchmark)])
    assert code == 2 and "not a readable checkpoint" in capsys.readouterr().err
    cache = FeatureCache(tmp_path / "features")
    path = cache.path("enc", "k" * 16)
    path.parent.mkdir()
    torch.save({"features": Payload(marker), "labels": torch.zeros(1), "key": "k", "checksum": ""}, path)
    assert cache.load(path, "k") is None, "an unsafe cache file is recomputed, not loaded"
    assert not marker.exists(), "no pickled code ran"


def test_no_unsafe_loader_in_the_code():
    """Every torch.load passes weights_only=True; no YAML reader but safe_load."""
    for path in [*(REPO / "harness").rglob("*.py"), *(REPO / "methods").rglob("*.py")]:
        text = path.read_text()
        for call in re.findall(r"torch\.load\((.*?)\)\n", text, flags=re.S):
            assert "weights_only=True" in call, f"{path}: torch.load({call})"
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b", text), path


@pytest.mark.parametrize("reader", ["experiment", "study", "benchmark"])
def test_every_yaml_reader_refuses_python_tags(reader, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    load = {"experiment": load_experiment, "study": load_study, "benchmark": load_benchmark}[reader]
    with pytest.raises(ConfigError, match="valid YAML"):
        load(evil)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_ui_listens_on_loopback_unless_told_otherwise(host, mlflow_uri):
    """The sockets the UI's processes listen on: 127.0.0.1 only by default; --host changes it."""
    port = free_port()
    command = [sys.executable, "-m", "harness", "ui", "--tracking-uri", mlflow_uri, "--port", str(port)]
    command += ["--host", host] if host else []
    ui = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        addresses: set[str] = set()
        deadline = time.monotonic() + 120
        while not addresses and time.monotonic() < deadline:
            time.sleep(0.5)
            tree = [psutil.Process(ui.pid), *psutil.Process(ui.pid).children(recursive=True)]
            for process in tree:
                try:
                    connections = process.net_connections(kind="inet")
                except psutil.Error:
                    continue
                addresses |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
        assert addresses == {host or "127.0.0.1"}, addresses
    finally:
        ui.terminate()  # SIGTERM stops the server as Ctrl-C does
        ui.wait(timeout=60)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # none left


def test_manifest_rows_cannot_escape_the_data_root_unless_allowed(index_videos, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    inside = root / "videos" / "a.mp4"
    inside.write_bytes(index_videos["long"].read_bytes())
    (root / "videos" / "link.mp4").symlink_to(index_videos["one_gop"])  # a symlink pointing out
    tree = {"data": {"clips": 2, "frames": 2, "stride": 2, "crop": 16, "batch_size": 2, "workers": 0}}
    escapes = {
        "dotdot": "videos/../" + os.path.relpath(index_videos["short"], root),
        "absolute": str(index_videos["short"]),
        "symlink": "videos/link.mp4",
    }
    for name, row in escapes.items():
        manifest = root / f"{name}.csv"
        manifest.write_text(f"path,label\nvideos/a.mp4,0\n{row},1\n")
        config = tmp_path / "exp.yaml"
        config.write_text(yaml.safe_dump({**tree, "data": {**tree["data"], "train": str(manifest)}}))
        code = main(["data", "inspect", str(config), "--batch", "2"])
        err = capsys.readouterr().err
        assert code == 2 and f"{manifest}:3: " in err and "outside the data root" in err, (name, err)
        assert "data.allow_outside_root=true" in err
        code = main(["data", "inspect", str(config), "data.allow_outside_root=true", "--batch", "2"])
        out = capsys.readouterr()
        assert code == 0 and "2 videos" in out.out, (name, out.err)
    manifest = write_manifest(root / "ok.csv", [{"path": str(inside), "label": 0}])
    config.write_text(
        yaml.safe_dump({**tree, "data": {**tree["data"], "train": str(manifest), "batch_size": 1}})
    )
    assert main(["data", "inspect", str(config), "--batch", "1"]) == 0, "rows inside the root need no flag"


SECRET = "s3cr3t-pa55"


def test_store_errors_and_retry_logs_redact_passwords(monkeypatch, caplog, mlflow_uri):
    monkeypatch.setenv("RHO_RETRY_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    with caplog.at_level(logging.WARNING):
        with pytest.raises(TrackingUnavailableError) as tracking:
            server = f"http://rho:{SECRET}@127.0.0.1:{port}"
            tracking_call(server, "search", lambda: MlflowClient(server).search_experiments())
        with pytest.raises(StorageUnavailableError) as storage:
            ReconnectingRDBStorage(f"postgresql+psycopg2://rho:{SECRET}@127.0.0.1:{port}/rho")
    texts = [str(tracking.value), str(storage.value), caplog.text]
    assert all("rho:***@127.0.0.1" in text for text in texts[:2])
    assert caplog.records and not any(SECRET in text for text in texts)
    logger = RunLogger(mlflow_uri, "redact", system_metrics=False)
    logger.log_params({"runtime.tracking_uri": f"postgresql://rho:{SECRET}@db/rho"})
    logger.set_tags({"failure_reason": f"could not reach mysql://rho:{SECRET}@db:3306/x"})
    logger.finish()
    run = MlflowClient(mlflow_uri).get_run(logger.run_id)
    assert run.data.params["runtime.tracking_uri"] == "postgresql://rho:***@db/rho"
    assert SECRET not in repr(run.data.tags)


@pytest.mark.slow
def test_a_study_writes_no_password_anywhere(tiny_synth, tmp_path, mlflow_uri):
    """A study on PostgreSQL (its URL holds the password) with a password-bearing URL in its config:
    the password is in no MLflow param, tag or artifact, no Optuna attribute, no output or log line."""
    url = os.environ.get("RHO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RHO_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    import sqlalchemy

    password = sqlalchemy.engine.make_url(url).password
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    engine.dispose()
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["runtime"]["tracking_uri"] = url  # overridden by --tracking-uri, but logged as a param
    tree["optim"]["epochs"] = 1
    spec = tmp_path / "secret.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "secret",
                "experiment": tree,
                "grid": {"optim.lr": [0.05, 1.0e30]},  # the second fails: its reason is recorded too
                "objective": {"metric": "loss", "direction": "minimize"},
            }
        )
    )
    out = rho("-v", "study", "run", str(spec), "--storage", url, "--tracking-uri", mlflow_uri, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    status = rho("study", "status", "secret", "--storage", url)
    texts = [out.stdout, out.stderr, status.stdout, status.stderr]
    study = optuna.load_study(study_name="secret", storage=url)
    assert {t.state.name for t in study.trials} == {"COMPLETE", "FAIL"}
    texts.append(repr(study.user_attrs))
    texts += [repr((t.user_attrs, t.system_attrs, t.params)) for t in study.trials]
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id])
    assert len(runs) == 3
    for run in runs:
        texts += [repr(run.data.params), repr(run.data.tags)]
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        texts += [p.read_text(errors="ignore") for p in local.rglob("*") if p.is_file()]
    child = next(r for r in runs if r.data.tags.get("rho.role") != "study")
    assert child.data.params["runtime.tracking_uri"] == url.replace(password, "***"), "logged, redacted"
    written = [p for p in Path(tree["runtime"]["output_dir"]).rglob("*") if p.is_file()]
    assert any(p.name == "last.pt" for p in written), written
    for path in written:  # checkpoints (their copy of the config), run.json, everything on disk
        texts.append(repr(load_checkpoint(path)) if path.suffix == ".pt" else path.read_text(errors="ignore"))
    leaks = [t[:200] for t in texts if password in t]
    assert not leaks, leaks
