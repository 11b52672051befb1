"""Pretraining end to end on real mp4 files: resume is exact, checkpoints are safe, MLflow is complete."""

import math

import pytest
import torch
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree

from harness.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from harness.config import build_experiment
from harness.optim import LARS, lr_at, scaled_lr
from harness.train import NonFiniteLossError, pretrain


class Stop(Exception):
    pass


def experiment(tiny_synth, tmp_path, **sections):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    for key, value in sections.items():
        section, _, name = key.partition("__")
        tree.setdefault(section, {})[name] = value
    return build_experiment(tree)


def test_resume_after_an_interruption_is_bit_identical(tiny_synth, tmp_path, mlflow_uri):
    uri = mlflow_uri
    for method in (
        {"name": "moco", "queue_size": 16, "hidden_dims": [16], "out_dim": 8},
        {"name": "simclr", "hidden_dims": [16], "out_dim": 8},
    ):
        exp = experiment(tiny_synth, tmp_path, optim__epochs=3)
        exp.method = build_experiment({**tiny_experiment_tree(tiny_synth, tmp_path), "method": method}).method
        straight = pretrain(
            exp, output=tmp_path / f"straight-{method['name']}", tracking_uri=uri, print_progress=False
        )

        def stop_after_first(epoch, metrics):
            if epoch == 1:
                raise Stop

        with pytest.raises(Stop):
            pretrain(
                exp,
                output=tmp_path / f"split-{method['name']}",
                tracking_uri=uri,
                on_epoch_end=stop_after_first,
            )
        resumed = pretrain(exp, output=tmp_path / f"split-{method['name']}", tracking_uri=uri, resume=True)
        a = load_checkpoint(straight.checkpoint)["method"]
        b = load_checkpoint(resumed.checkpoint)["method"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{method['name']}: resumed weights differ"
        assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
        assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
        client = MlflowClient(uri)
        run = client.get_run(resumed.run_id)
        assert run.data.tags["resumed_from_epoch"] == "1"
        assert len(client.get_metric_history(resumed.run_id, "epoch.loss")) == 3


def test_the_frame_cache_trains_the_same_weights_and_resumes_either_way(
    tiny_synth, tmp_path, mlflow_uri, capsys
):
    plain = experiment(tiny_synth, tmp_path, optim__epochs=2)
    cached = experiment(tiny_synth, tmp_path, optim__epochs=2, data__cache=True)
    assert plain.training_hash() == cached.training_hash(), "a cache does not change what is trained"
    a = pretrain(plain, output=tmp_path / "plain", tracking_uri=mlflow_uri, print_progress=False)
    b = pretrain(cached, output=tmp_path / "cached", tracking_uri=mlflow_uri, print_progress=False)
    assert "data.cache: 12 videos decoded into memory" in capsys.readouterr().out
    wa, wb = load_checkpoint(a.checkpoint)["method"], load_checkpoint(b.checkpoint)["method"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_a_checkpoint_of_another_config_is_refused(tiny_synth, tmp_path, mlflow_uri):
    uri = mlflow_uri
    pretrain(experiment(tiny_synth, tmp_path, optim__epochs=1), output=tmp_path / "run", tracking_uri=uri)
    other = experiment(tiny_synth, tmp_path, optim__epochs=1, data__clips=3)
    with pytest.raises(CheckpointError, match="another training config"):
        pretrain(other, output=tmp_path / "run", tracking_uri=uri, resume=True)


def test_mlflow_run_has_params_tags_metrics_and_artifacts(tiny_synth, tmp_path, mlflow_uri):
    uri = mlflow_uri
    exp = experiment(tiny_synth, tmp_path, runtime__save_encoder=True, data__t_max=0.5)
    result = pretrain(exp, output=tmp_path / "run", tracking_uri=uri, print_progress=False)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["data.clips"] == "2" and params["method.name"] == "simclr" and params["optim.lr"] == "0.05"
    assert params["data.t_max_frames"] == "0.5s x fps"
    assert tags["method"] == "simclr" and tags["backbone"] == "r3d_tiny" and tags["rho"] == "2"
    assert tags["dataset"] == "synthetic" and "version.torch" in tags and "host" in tags
    losses = client.get_metric_history(result.run_id, "loss")
    assert len(losses) == 2 * 3  # 12 videos / batch 4 = 3 steps, 2 epochs, logged every step
    assert all(math.isfinite(m.value) for m in losses)
    for name in ("lr", "clips_per_s", "data_wait", "epoch.loss"):
        assert client.get_metric_history(result.run_id, name), name
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "training_curves.png", "encoder.pt"} <= artifacts


def test_nan_loss_fails_the_run_with_the_reason(tiny_synth, tmp_path, mlflow_uri):
    uri = mlflow_uri
    exp = experiment(tiny_synth, tmp_path, optim__lr=1e30, optim__name="sgd")
    with pytest.raises(NonFiniteLossError, match="loss became"):
        pretrain(exp, output=tmp_path / "run", tracking_uri=uri, print_progress=False)
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tests").experiment_id])
    assert runs[0].info.status == "FAILED" and "NonFiniteLossError" in runs[0].data.tags["failure_reason"]


def test_random_baseline_trains_nothing_and_still_checkpoints(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["method"] = {"name": "random"}
    result = pretrain(build_experiment(tree), output=tmp_path / "run", tracking_uri=mlflow_uri)
    assert result.history == [] and load_checkpoint(result.checkpoint)["epoch"] == 2


def test_checkpoints_are_written_atomically(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"config_hash": "abc", "weights": torch.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(load_checkpoint(path, expected_hash="abc")["weights"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_schedule_and_lr_scaling():
    peak = 1.0
    assert lr_at(0, 100, 10, peak) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, peak) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, peak) == pytest.approx(0.5)
    assert lr_at(99, 100, 10, peak, min_lr_ratio=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90))
    )
    exp = build_experiment({"optim": {"lr": 0.1, "base_batch_size": 256}}, check_files=False)
    assert scaled_lr(exp.optim, 512) == pytest.approx(0.2)
    exp.optim.lr_scaling = "sqrt"
    assert scaled_lr(exp.optim, 1024) == pytest.approx(0.2)


def test_lars_scales_updates_by_the_trust_ratio_but_not_for_excluded_groups():
    weight = torch.nn.Parameter(torch.full((4,), 2.0))
    bias = torch.nn.Parameter(torch.full((4,), 2.0))
    optimizer = LARS(
        [{"params": [weight], "lars_exclude": False}, {"params": [bias], "lars_exclude": True}],
        lr=1.0,
        momentum=0.0,
        trust=0.01,
    )
    weight.grad, bias.grad = torch.full((4,), 0.5), torch.full((4,), 0.5)
    optimizer.step()
    # trust ratio = 0.01 * |w| / |g| = 0.01 * 4 / 1 = 0.04; update = 0.04 * 0.5
    assert torch.allclose(weight, torch.full((4,), 2.0 - 0.02))
    assert torch.allclose(bias, torch.full((4,), 1.5))


def test_knn_monitor_runs_every_epoch_on_a_fixed_subset(tiny_synth, tmp_path, mlflow_uri):
    from harness.train import monitor_subset

    rows = list(range(100))
    subset = monitor_subset(rows, 10, seed=0)
    assert len(subset) == 10 and subset == sorted(subset) and subset == monitor_subset(rows, 10, seed=0)
    assert subset != monitor_subset(rows, 10, seed=1) and monitor_subset(
        rows, None, 0
    ) == rows == monitor_subset(rows, 100, 0)

    exp = experiment(tiny_synth, tmp_path, eval__knn_monitor=True, eval__knn_k=3, eval__knn_monitor_videos=4)
    result = pretrain(exp, output=tmp_path / "run", tracking_uri=mlflow_uri, print_progress=False)
    history = MlflowClient(mlflow_uri).get_metric_history(result.run_id, "epoch.knn_top1")
    assert [m.step for m in history] == [1, 2]
    # The last epoch's value is the monitor of the final encoder on the 4-video subsets, recomputed here.
    from harness.data import read_manifest
    from harness.data.views import ViewDataset
    from harness.eval import knn_monitor
    from harness.train import load_trained

    method, trained, _ = load_trained(result.checkpoint)
    d = trained.data
    views = dict(frames=d.frames, stride=d.stride, crop=d.crop, short_side=d.short_side, fps=d.fps)
    train_rows, val_rows = (read_manifest(path, check_files=False) for path in (d.train, d.val))

    train_set, val_set = (ViewDataset(monitor_subset(rows, 4, 0), **views) for rows in (train_rows, val_rows))
    assert len(val_rows) == 8 and len(train_rows) > 4 and len(train_set) == len(val_set) == 4
    assert history[-1].value == pytest.approx(knn_monitor(method.encoder, train_set, val_set, k=3))


def test_runs_of_different_methods_with_one_seed_have_different_telling_names(
    tiny_synth, tmp_path, mlflow_uri
):
    """Run names are read back from the store: method, ρ, backbone, hash and seed, not a name the
    seeded RNG makes the same for every run of seed 0; a given --run-name is kept."""
    names = {}
    for method in (
        {"name": "simclr", "hidden_dims": [16], "out_dim": 8},
        {"name": "moco", "queue_size": 16, "hidden_dims": [16], "out_dim": 8},
    ):
        tree = tiny_experiment_tree(tiny_synth, tmp_path)
        tree["method"], tree["optim"]["epochs"] = method, 1
        exp = build_experiment(tree)
        result = pretrain(
            exp, output=tmp_path / method["name"], tracking_uri=mlflow_uri, print_progress=False
        )
        names[method["name"]] = MlflowClient(mlflow_uri).get_run(result.run_id).info.run_name
        assert names[method["name"]] == f"{method['name']} rho2 r3d_tiny {exp.training_hash()[:8]} s0"
    assert names["simclr"] != names["moco"]
    exp = experiment(tiny_synth, tmp_path, optim__epochs=1)
    chosen = pretrain(exp, run_name="my-run", tracking_uri=mlflow_uri, print_progress=False)
    assert MlflowClient(mlflow_uri).get_run(chosen.run_id).info.run_name == "my-run"
    assert chosen.checkpoint.parent.name == "my-run"
