"""Pruning: the spec's pruner keys, and a real study (sqlite Optuna storage, sqlite MLflow store) whose
ASHA pruner stops a trial that learns nothing; the pruned trial keeps its checkpoint and its run."""

import optuna
import pytest
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree

from harness.checkpoint import load_checkpoint
from harness.config import ConfigError
from harness.study import enqueue_points, make_storage, open_study, parse_study, run_worker
from harness.study import spec as spec_module
from harness.study.backend import make_pruner, pruner_settings


def spec_raw(tiny_synth, tmp_path, **extra) -> dict:
    raw = {
        "name": "prune",
        "experiment": tiny_experiment_tree(tiny_synth, tmp_path),
        "grid": {"optim.lr": [0.5, 1.0e-9]},
        "seeds": [0],
        "objective": {"metric": "loss", "direction": "minimize"},
        "limits": {"heartbeat_interval": 1, "grace_period": 4},
        "table": {"rows": "optim.lr", "columns": "data.clips"},
    }
    raw.update(extra)
    return raw


def test_asha_keys_validated(tiny_synth, tmp_path):
    pruner = {"type": "asha", "metric": "loss", "min_resource": 2, "reduction_factor": 4}
    spec = parse_study(spec_raw(tiny_synth, tmp_path, pruner=pruner), check_files=False)
    assert spec.pruner == "asha" and spec.pruner_direction == "minimize"
    assert spec.pruner_asha == {"min_resource": 2, "reduction_factor": 4, "min_early_stopping_rate": 0}
    built = make_pruner(**pruner_settings(spec))
    assert isinstance(built, optuna.pruners.SuccessiveHalvingPruner)
    assert built._min_resource == 2 and built._reduction_factor == 4
    # the default rungs start at the warm-up (at least one epoch)
    spec = parse_study(
        spec_raw(tiny_synth, tmp_path, pruner={"type": "asha", "metric": "loss"}), check_files=False
    )
    assert spec.pruner_asha["min_resource"] == 1 and spec.pruner_asha["reduction_factor"] == 3
    bad = [
        ({"type": "asha", "metric": "loss", "reduction_factor": 1}, "pruner.reduction_factor"),
        ({"type": "asha", "metric": "loss", "min_resource": 0}, "pruner.min_resource"),
        ({"type": "asha", "metric": "loss", "min_early_stopping_rate": -1}, "pruner.min_early_stopping_rate"),
        ({"type": "asha", "metric": "loss", "min_resource": 1.5}, "pruner.min_resource"),
        ({"type": "median", "metric": "loss", "min_resource": 2}, "pruner.min_resource"),  # asha only
        ({"type": "asha", "metric": "val_loss"}, "pruner.metric"),  # not logged per epoch
        ({"type": "asha", "metric": "knn_top1"}, "pruner.metric"),  # needs eval.knn_monitor
        ({"type": "asha", "metric": "loss", "direction": "up"}, "pruner.direction"),
        ({"type": "asha", "metric": "loss", "rungs": 3}, "pruner.rungs"),
        ({"type": "sha"}, "pruner.type"),
    ]
    for pruner, key in bad:
        with pytest.raises(ConfigError) as info:
            parse_study(spec_raw(tiny_synth, tmp_path, pruner=pruner), check_files=False)
        assert info.value.key == key, (pruner, info.value)


def test_direction_inferred_and_overridden(tiny_synth, tmp_path):
    raw = spec_raw(tiny_synth, tmp_path, pruner={"type": "median", "metric": "positive_accuracy"})
    assert parse_study(raw, check_files=False).pruner_direction == "maximize"
    raw["pruner"]["direction"] = "minimize"
    assert parse_study(raw, check_files=False).pruner_direction == "minimize"


def test_loss_reported_in_the_study_direction(tmp_path):
    """A loss watched in a study that maximizes is reported negated, so the pruner ranks it right."""
    from harness.study.backend import pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    pruning_callback(trial, "loss", "minimize")(1, {"loss": 2.5})
    assert study.trials[0].intermediate_values == {1: -2.5}


def test_asha_prunes_a_real_trial_and_keeps_it(tiny_synth, tmp_path, monkeypatch):
    """A real study (the study runner, sqlite Optuna storage and MLflow store) whose ASHA pruner
    watches a metric the test controls: the per-epoch learning rate (made a pruner metric here),
    higher is better, in a study that minimizes the loss (so it is reported negated). lr 0.5 runs
    first; lr 1e-9 is then the worse of the two at the 1-epoch rung and, with reduction factor 2,
    is pruned there."""
    monkeypatch.setitem(spec_module.PRUNER_METRICS, "lr", "maximize")
    raw = spec_raw(
        tiny_synth,
        tmp_path,
        overrides={"optim.epochs": 3},
        pruner={"type": "asha", "metric": "lr", "min_resource": 1, "reduction_factor": 2},
    )
    spec = parse_study(raw)
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    assert enqueue_points(open_study(spec, make_storage(storage, spec)), spec) == 2  # as `rho study run`
    report = run_worker(spec, storage, tracking, quiet=True)
    assert (report.completed, report.pruned, report.failed) == (1, 1, 0), report
    study = optuna.load_study(study_name="prune", storage=storage)
    by_lr = {t.params["optim.lr"]: t for t in study.trials}
    good, bad = by_lr[0.5], by_lr[1.0e-9]
    assert good.state == optuna.trial.TrialState.COMPLETE, good
    assert bad.state == optuna.trial.TrialState.PRUNED, bad
    assert bad.user_attrs["pruned_at_epoch"] == 1 and max(bad.intermediate_values) == 1
    assert bad.intermediate_values[1] < 0  # reported in the study's direction
    # its checkpoint (the epoch it reached) and its MLflow run remain, the run KILLED and tagged
    checkpoint = tmp_path / "checkpoints" / "prune" / bad.user_attrs["rho.key"] / "last.pt"
    assert load_checkpoint(checkpoint)["epoch"] == 1
    run = MlflowClient(tracking).get_run(bad.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["pruned_at_epoch"] == "1" and "failure_reason" not in run.data.tags
    assert run.data.tags["pruned"].startswith("pruned after epoch 1")
    assert "epoch.loss" in run.data.metrics
    # a re-run of the study runs nothing again: the pruned point is done
    assert enqueue_points(open_study(spec, make_storage(storage, spec)), spec) == 0
    again = run_worker(spec, storage, tracking, quiet=True)
    assert (again.completed, again.pruned, again.failed) == (0, 0, 0), again
    assert len(optuna.load_study(study_name="prune", storage=storage).trials) == 2


def test_pruned_before_the_last_epoch_only():
    """A pruned trial records the epoch; after its last epoch a trial is never pruned (its result is in)."""
    from harness.study.backend import pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    trial = study.ask()
    pruning_callback(trial, "knn_top1", "maximize", epochs=3)(3, {"knn_top1": 10.0})  # the last: goes on
    with pytest.raises(optuna.TrialPruned):
        pruning_callback(trial, "knn_top1", "maximize", epochs=3)(2, {"knn_top1": 10.0})
    assert study.trials[0].user_attrs["pruned_at_epoch"] == 2
