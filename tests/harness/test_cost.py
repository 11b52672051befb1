"""Compute accounting (issue 29, item 3): every run logs its cost (wall and device seconds, training
FLOPs, clips seen, bytes decoded), a resumed run carries its totals on, a study stops at its
device-hour budget, and the report and leaderboard show the cost. Real mp4 files, a real MLflow
sqlite store and a real Optuna sqlite storage."""

import csv
import math
import os
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree
from torch.utils.flop_counter import FlopCounterMode

from harness.config import build_experiment
from harness.train import pretrain
from harness.train.factories import build_method

EPOCHS, STEPS, BATCH = 2, 3, 4  # tiny_synth: 12 videos / batch 4 = 3 steps per epoch


class Stop(Exception):
    pass


def tiny(tiny_synth, tmp_path, **data):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"].update(data)
    tree["optim"]["epochs"] = EPOCHS
    return build_experiment(tree)


def train_bytes(tiny_synth) -> int:
    with open(tiny_synth["train"]) as handle:
        rows = list(csv.DictReader(handle))
    root = Path(tiny_synth["train"]).parent
    return sum(os.path.getsize(p if os.path.isabs(p) else root / p) for p in (r["path"] for r in rows))


def independent_step_flops(experiment, views: int) -> tuple[float, float]:
    """FlopCounterMode around a fresh method's training step (forward + backward) on a batch of the
    run's shape, and around its backbone's forward + backward alone on the same clips."""
    method = build_method(experiment)
    data = experiment.data
    clips = torch.rand(BATCH, views, 3, data.frames, data.crop, data.crop)
    batch = {"clips": clips, "label": torch.zeros(BATCH, dtype=torch.long), "index": torch.arange(BATCH)}
    with FlopCounterMode(display=False) as step:
        method.training_step(batch).loss.backward()
    encoder = build_method(experiment).encoder
    with FlopCounterMode(display=False) as backbone:
        encoder(clips.flatten(0, 1)).sum().backward()
    return float(step.get_total_flops()), float(backbone.get_total_flops())


@pytest.mark.parametrize("clips", [1, 2])
def test_a_run_logs_its_cost(tiny_synth, tmp_path, mlflow_uri, clips):
    exp = tiny(tiny_synth, tmp_path, clips=clips)
    result = pretrain(exp, output=tmp_path / "run", tracking_uri=mlflow_uri, print_progress=False)
    cost = result.cost
    views = max(clips, 2)  # ρ = 1 trains on two views of one clip
    steps = EPOCHS * STEPS
    assert cost["cost.clips_seen"] == steps * BATCH * views
    assert 0 < cost["cost.bytes_decoded"] <= train_bytes(tiny_synth) * EPOCHS
    assert cost["cost.wall_seconds"] > 0 and cost["cost.device_seconds"] == cost["cost.wall_seconds"]
    assert cost["cost.eval_seconds"] >= 0
    step_flops, backbone_flops = independent_step_flops(exp, views)
    assert cost["cost.step_flops"] == pytest.approx(step_flops, rel=1e-9)
    assert cost["cost.flops_per_clip"] == pytest.approx(step_flops / (BATCH * views), rel=1e-9)
    assert cost["cost.train_flops"] == pytest.approx(step_flops * steps, rel=1e-9)
    # the backbone is most of a step: its forward + backward alone is within 30% of it
    assert backbone_flops <= step_flops <= 1.3 * backbone_flops
    logged = MlflowClient(mlflow_uri).get_run(result.run_id).data.metrics
    assert {k: logged[k] for k in cost} == pytest.approx(cost)
    per_epoch = MlflowClient(mlflow_uri).get_metric_history(result.run_id, "cost.clips_seen")
    assert [(m.step, m.value) for m in per_epoch][:2] == [
        (1, STEPS * BATCH * views),
        (2, steps * BATCH * views),
    ]


def test_the_cost_counting_leaves_training_unchanged_and_a_resumed_run_carries_it_on(
    tiny_synth, tmp_path, mlflow_uri
):
    exp = tiny(tiny_synth, tmp_path)
    straight = pretrain(exp, output=tmp_path / "straight", tracking_uri=mlflow_uri, print_progress=False)

    def stop_after_first(epoch, metrics):
        assert metrics["cost.clips_seen"] == STEPS * BATCH * 2  # the callback sees the totals so far
        raise Stop

    with pytest.raises(Stop):
        pretrain(exp, output=tmp_path / "split", tracking_uri=mlflow_uri, on_epoch_end=stop_after_first)
    first = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["cost"]
    assert first["clips_seen"] == STEPS * BATCH * 2 and first["wall_seconds"] > 0
    resumed = pretrain(
        exp, output=tmp_path / "split", tracking_uri=mlflow_uri, resume=True, print_progress=False
    )
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for key in ("cost.clips_seen", "cost.bytes_decoded", "cost.train_flops", "cost.flops_per_clip"):
        assert resumed.cost[key] == straight.cost[key], key  # the same data and steps, counted once
    assert resumed.cost["cost.wall_seconds"] > first["wall_seconds"]


def test_a_mid_epoch_resume_carries_the_cost_on(tiny_synth, tmp_path, mlflow_uri):
    from harness.train import pretraining

    exp = tiny(tiny_synth, tmp_path)
    exp.runtime.checkpoint_every = 1
    straight = pretrain(exp, output=tmp_path / "straight", tracking_uri=mlflow_uri, print_progress=False)
    calls = {"n": 0}
    real = pretraining._StepBoundary.__call__

    def stop_in_epoch_two(self, epoch, progress, periodic=True):
        real(self, epoch, progress, periodic)
        if epoch == 1 and progress.batches == 1:
            calls["n"] += 1
            raise Stop

    pretraining._StepBoundary.__call__ = stop_in_epoch_two
    try:
        with pytest.raises(Stop):
            pretrain(exp, output=tmp_path / "split", tracking_uri=mlflow_uri, print_progress=False)
    finally:
        pretraining._StepBoundary.__call__ = real
    saved = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert saved["in_epoch"]["batches"] == 1 and saved["cost"]["clips_seen"] == (STEPS + 1) * BATCH * 2
    resumed = pretrain(
        exp, output=tmp_path / "split", tracking_uri=mlflow_uri, resume=True, print_progress=False
    )
    assert resumed.cost["cost.clips_seen"] == straight.cost["cost.clips_seen"]
    assert resumed.cost["cost.bytes_decoded"] == straight.cost["cost.bytes_decoded"]


def test_a_study_stops_taking_trials_once_its_device_hours_are_spent(
    tiny_synth, tmp_path, mlflow_uri, capsys
):
    from harness.study import load_study, prepare_study, run_worker

    spec = {
        "name": "budget",
        "experiment": tiny_experiment_tree(tiny_synth, tmp_path),
        "grid": {"data.clips": [1, 2, 3]},
        "seeds": [0],
        "objective": {"metric": "loss", "direction": "minimize"},
        "limits": {"device_hours": 1e-9},  # spent by the first trial
    }
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(spec))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    loaded = load_study(path)
    assert loaded.limits["device_hours"] == 1e-9
    prepare_study(loaded, storage, mlflow_uri)
    report = run_worker(loaded, storage, mlflow_uri, quiet=True)
    assert report.completed == 1 and report.over_budget, report
    assert "compute budget spent" in capsys.readouterr().out
    trials = optuna.load_study(study_name="budget", storage=storage).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["cost.device_seconds"] > 0
    assert sum(t.state == optuna.trial.TrialState.WAITING for t in trials) == 2  # left for a larger budget


def test_device_hours_must_be_a_number(tiny_synth, tmp_path):
    from harness.config import ConfigError
    from harness.study import load_study

    spec = {
        "name": "bad",
        "experiment": tiny_experiment_tree(tiny_synth, tmp_path),
        "grid": {"data.clips": [1]},
        "seeds": [0],
        "objective": {"metric": "loss", "direction": "minimize"},
        "limits": {"device_hours": "lots"},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="limits.device_hours"):
        load_study(path)


@pytest.fixture(scope="module")
def small_study(tiny_synth, _mlflow_template, tmp_path_factory):
    from report_study import build_small_study

    return build_small_study(tmp_path_factory.getbasetemp() / "report_study", tiny_synth, _mlflow_template)


def test_the_report_and_the_leaderboard_show_the_cost(small_study, tmp_path):
    from report_study import METRIC, NAME

    from harness.report.leaderboard import build_leaderboard, write_leaderboard
    from harness.report.plots import compute_plot, pareto_front
    from harness.report.runs import load_study_runs

    runs = load_study_runs(small_study.tracking_uri, NAME).finished
    client = MlflowClient(small_study.tracking_uri)
    for _, row in runs.iterrows():
        logged = client.get_run(row["run_id"]).data.metrics
        assert row["device_hours"] == pytest.approx(logged["cost.device_seconds"] / 3600)
        if row["method.name"] == "random":  # trains nothing: no time, no FLOPs counted
            assert row["device_hours"] == 0 and math.isnan(row["train_pflops"])
        else:
            assert row["train_pflops"] == pytest.approx(logged["cost.train_flops"] / 1e15)
    png, front = compute_plot(runs, METRIC, "method.name", tmp_path / "flops.png", x="train_pflops")
    trained = runs[runs["train_pflops"].notna()]
    expected = pareto_front(trained["train_pflops"].to_list(), trained[METRIC].to_list())
    assert png.read_bytes()[:4] == b"\x89PNG" and front == [trained["run_id"].iloc[i] for i in expected]

    board = build_leaderboard(small_study.tracking_uri, "tiny-knn")
    table = next(iter(board.tables.values()))
    for _, row in table.iterrows():
        logged = client.get_run(row["run_id"]).data.metrics
        assert row["device_hours"] == pytest.approx(logged["cost.device_seconds"] / 3600)
    paths = write_leaderboard(board, tmp_path / "lb")
    markdown = paths[0].read_text()
    assert "| device-hours | train PFLOPs |" in markdown
    assert {"device_hours", "train_pflops"} <= set(next(csv.DictReader(paths[2].open())))
