"""`torchrun --nproc_per_node=2 -m harness pretrain` on CPU (gloo): one run, rank 0 logs and checkpoints."""

import socket
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree

from harness.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(tree, tmp_path, mlflow_uri):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(tree))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "harness",
        "pretrain",
        str(config),
        "--output",
        str(tmp_path / "out"),
        "--tracking-uri",
        mlflow_uri,
        "--run-name",
        "ddp",
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_torchrun_two_ranks_trains_with_global_batch_semantics(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["method"] = {"name": "moco", "queue_size": 16, "hidden_dims": [16], "out_dim": 8}
    out = torchrun(tree, tmp_path, mlflow_uri)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1, "only rank 0 logs"
    run = runs[0]
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"
    # global batch 4 over 2 ranks: 12 videos -> 3 steps per epoch, as in one process
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2 * 3
    state = load_checkpoint(tmp_path / "out" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 6
    assert out.stdout.count("MLflow run") == 1


def test_sync_bn_on_cpu_is_refused_with_a_clear_error(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["backbone"]["sync_bn"] = True
    out = torchrun(tree, tmp_path, mlflow_uri)
    assert out.returncode != 0
    assert "backbone.sync_bn = True is not allowed: false on CPU" in out.stderr
