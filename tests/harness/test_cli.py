"""The `rho` command: help for every subcommand, an error in one line, evaluate a checkpoint, the MLflow UI."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from bad_files import warnings_per_file, write_bad_videos
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree, write_tiny_knn_benchmark

from harness.cli import build_parser, main
from harness.cli.common import warn_passwords_in_argv
from harness.data import write_manifest

REPO = Path(__file__).resolve().parents[2]


def rho(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True, **kwargs
    )


def subcommands(parser, prefix=()):
    """``(command, summary)`` for every subcommand, depth first; the summary is its line in the parent's help."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*prefix, name), summaries.get(name)
                yield from subcommands(sub, (*prefix, name))


# What a user looks for in each command's help: its arguments and main options.
HELP_ARGUMENTS = {
    (): ["--verbose", "--version"],
    ("init",): ["folder", "--force"],
    ("config", "show"): ["config", "key=value", "--no-check-files"],
    ("config", "keys"): [],
    ("data", "synth"): ["out", "--train", "--val", "--classes", "--size", "--seed", "--workers"],
    ("data", "check"): ["manifest", "--full", "--threads"],
    ("data", "inspect"): ["config", "key=value", "--batch"],
    ("data", "import", "ucf101"): ["videos", "splits", "out", "--split"],
    ("pretrain",): [
        "config",
        "key=value",
        "--resume",
        "--run-name",
        "--tracking-uri",
        "--output",
        "--result-json",
    ],
    ("study", "run"): ["spec", "--storage", "--tracking-uri", "--workers", "--gpus-per-trial"],
    ("study", "worker"): ["spec", "--storage", "--tracking-uri"],
    ("study", "status"): ["name", "--storage"],
    ("study", "delete"): ["spec", "--storage"],
    ("study", "list"): ["--storage"],
    ("evaluate",): ["checkpoint", "--benchmark", "--device", "--workers"],
    ("demo",): ["--spec"],
    ("ui",): ["--tracking-uri", "--host", "--port"],
    ("report",): ["study", "--out", "--metric", "--rows", "--columns", "--no-log"],
    ("leaderboard",): ["--benchmark", "--tracking-uri", "--out"],
    ("dashboard",): ["study", "--storage", "--host", "--port"],
    ("bench",): ["NAME", "--list", "--quick", "--param", "--output"],
}


def help_text(command, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0, command
    return capsys.readouterr().out


def test_every_subcommand_has_useful_help(capsys):
    commands = dict(subcommands(build_parser()))
    assert set(HELP_ARGUMENTS) - {()} <= set(commands)
    assert {("data", "import", name) for name in ("folders", "ucf101", "hmdb51", "kinetics", "ssv2")} <= set(
        commands
    )
    for command in [(), *commands]:
        text = help_text(command, capsys)
        assert text.startswith(" ".join(["usage: rho", *command])), command
        flat = " ".join(text.split())
        for child, summary in commands.items():  # every subcommand is listed with its summary
            if child[:-1] == command:
                assert summary and f"{child[-1]} {summary}" in flat, child
        for argument in HELP_ARGUMENTS.get(command, []):  # listed on its own line, not just in the usage
            assert re.search(rf"^ +(?:-\w, )?{re.escape(argument)}(?=[ ,\n])", text, re.MULTILINE), (
                command,
                argument,
            )
    assert "examples:\n  rho demo" in help_text((), capsys)


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


def test_a_harness_error_ends_in_one_line_with_its_exit_status(mlflow_uri, capsys):
    assert main(["report", "no-such-study", "--tracking-uri", mlflow_uri, "--no-log"]) == 2  # a ReportError
    err = capsys.readouterr().err
    assert err.startswith("rho: error: no MLflow experiment named 'no-such-study'") and err.count("\n") == 1


def test_evaluate_a_checkpoint_from_the_command_line(tiny_synth, tmp_path, mlflow_uri):
    benchmark = write_tiny_knn_benchmark(tiny_synth, tmp_path)
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["eval"] = {"benchmarks": [str(benchmark)]}  # pretraining evaluates its final encoder on it
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tree))
    result_json = tmp_path / "result.json"
    out = rho(
        "pretrain",
        str(config),
        "--output",
        str(tmp_path / "run"),
        "--tracking-uri",
        mlflow_uri,
        "--result-json",
        str(result_json),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run = MlflowClient(mlflow_uri).get_run(json.loads(result_json.read_text())["run_id"])
    logged = run.data.metrics["eval.tiny-knn.knn.top1"]
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
    assert line.split()[-1] == f"{logged:.4g}", "the checkpoint's top-1 is the one its pretraining logged"
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


def bad_video_config(tiny_synth, tmp_path, workers: int, cache: bool) -> tuple[Path, dict[str, Path]]:
    """The tiny experiment on its 12 training videos plus a truncated, an empty and a text .mp4."""
    good = sorted((tiny_synth["train"].parent / "videos").rglob("*.mp4"))[:12]
    bad = write_bad_videos(tmp_path / "data" / "bad", good[0])
    rows = [{"path": str(p), "label": i % 2} for i, p in enumerate(good)]
    rows[3:3] = [{"path": str(p), "label": 0} for p in bad.values()]
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    manifest = write_manifest(tmp_path / "data" / "train.csv", rows)
    tree["data"].update(train=str(manifest), val=None, workers=workers, cache=cache, allow_outside_root=True)
    tree["data"]["batch_size"] = 5  # 3 steps of 5: every row is read each epoch
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tree))
    return config, bad


@pytest.mark.parametrize(
    ("workers", "cache"),
    [
        (0, False),
        (2, False),
        pytest.param(0, True, marks=pytest.mark.slow),
        pytest.param(2, True, marks=pytest.mark.slow),
    ],
)
def test_pretrain_warns_once_per_bad_file_and_logs_the_count_every_epoch(
    tiny_synth, tmp_path, mlflow_uri, workers, cache
):
    """Two epochs: one warning per bad file in all (not per epoch or worker), in words, and
    ``epoch.bad_files`` in MLflow for each epoch, with or without the cache and workers."""
    config, bad = bad_video_config(tiny_synth, tmp_path, workers, cache)
    result_json = tmp_path / "result.json"
    out = rho(
        "pretrain", str(config), "--tracking-uri", mlflow_uri, "--result-json", str(result_json), timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    by_kind = warnings_per_file(out.stderr.splitlines(), bad)
    assert {kind: len(lines) for kind, lines in by_kind.items()} == dict.fromkeys(bad, 1), out.stderr
    assert all(f"{bad[kind]}: {kind} (" in lines[0] for kind, lines in by_kind.items())
    run_id = json.loads(result_json.read_text())["run_id"]
    history = MlflowClient(mlflow_uri).get_metric_history(run_id, "epoch.bad_files")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 3.0)]


@pytest.mark.parametrize("workers", [0, 2])
def test_inspect_counts_exactly_the_bad_files_it_warns_about(tiny_synth, tmp_path, workers):
    config, bad = bad_video_config(tiny_synth, tmp_path, workers, cache=False)
    out = rho("data", "inspect", str(config), "--batch", "15", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    by_kind = warnings_per_file(out.stderr.splitlines(), bad)
    assert {kind: len(lines) for kind, lines in by_kind.items()} == dict.fromkeys(bad, 1), out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("padded/skip"))
    assert "3 unreadable videos skipped" in line, line


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`rho config keys | head -1`: the reader has gone before rho writes (its pipe's read end is
    closed before rho starts, so every write fails, whatever the pipe's buffer holds); rho stops
    quietly with 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run(
            [sys.executable, "-m", "harness", "config", "keys"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        os.close(write_end)
    stderr = process.stderr.decode()
    assert process.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
