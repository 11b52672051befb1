"""The `rho` command: help for every subcommand, evaluate a checkpoint, the MLflow UI."""

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from tiny_data import tiny_experiment_tree, write_tiny_knn_benchmark

from harness.cli import build_parser
from harness.cli.common import warn_passwords_in_argv

REPO = Path(__file__).resolve().parents[2]


def rho(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True, **kwargs
    )


def subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from subcommands(sub, (*prefix, name))


def test_every_subcommand_has_useful_help(capsys):
    commands = list(subcommands(build_parser()))
    assert {
        ("pretrain",),
        ("evaluate",),
        ("study", "run"),
        ("data", "synth"),
        ("config", "show"),
        ("ui",),
    } <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "usage: rho " + " ".join(command) in text and len(text.splitlines()) >= 3, command


def test_a_password_on_the_command_line_draws_a_warning_that_does_not_repeat_it(capsys):
    parser = build_parser()
    secret = "postgresql://rho:s3cret@db.example:5432/optuna"
    warn_passwords_in_argv(parser.parse_args(["study", "run", "x.yaml", "--storage", secret]))
    err = capsys.readouterr().err
    assert "--storage" in err and "RHO_STORAGE" in err and "s3cret" not in err
    warn_passwords_in_argv(
        parser.parse_args(
            ["study", "run", "x.yaml", "--storage", "sqlite:///o.db", "--tracking-uri", "http://u:pw@h:5000"]
        )
    )
    err = capsys.readouterr().err
    assert "--tracking-uri" in err and "--storage" not in err and "pw@" not in err
    warn_passwords_in_argv(parser.parse_args(["study", "list", "--storage", "postgresql://rho@db/optuna"]))
    assert capsys.readouterr().err == ""


def test_evaluate_a_checkpoint_from_the_command_line(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tree))
    out = rho(
        "pretrain", str(config), "--output", str(tmp_path / "run"), "--tracking-uri", mlflow_uri, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    benchmark = write_tiny_knn_benchmark(tiny_synth, tmp_path)
    out = rho(
        "evaluate",
        str(tmp_path / "run" / "last.pt"),
        "--benchmark",
        str(benchmark),
        "--workers",
        "0",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if "eval.tiny-knn.knn.top1" in line)
    assert 0.0 <= float(line.split()[-1]) <= 100.0
    missing = rho("evaluate", str(tmp_path / "nope.pt"), "--benchmark", str(benchmark))
    assert (
        missing.returncode == 2 and "no checkpoint at" in missing.stderr and "Traceback" not in missing.stderr
    )


def test_ui_serves_the_store_on_localhost_and_stops_on_ctrl_c(mlflow_uri):
    ui = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--tracking-uri", mlflow_uri],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = ui.stdout.readline()
    assert "MLflow UI for sqlite:///" in first and "http://127.0.0.1:" in first
    url = first.split(" at ")[1].split()[0]
    deadline, status = time.monotonic() + 90, None
    while time.monotonic() < deadline and status is None:
        try:
            status = urllib.request.urlopen(url, timeout=2).status
        except OSError:
            time.sleep(0.5)
    ui.send_signal(signal.SIGINT)
    rest = ui.communicate(timeout=60)[0]
    assert status == 200
    assert ui.returncode == 0 and "MLflow UI stopped" in rest
