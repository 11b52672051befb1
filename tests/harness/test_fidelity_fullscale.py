"""The full-scale path as SlowFast ran it (issue 28, item 1; docs/fidelity.md, section "Full-scale
path"): the objective's protocol, the per-rank batch (BatchNorm group, ρMoCo's queue span), per-ρ
learning rates, per-method decode size, evaluation's Nesterov, test-view starts and crop rounding.

Each SlowFast computation is written here from its code (file:line in the docstrings), not
through ours.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import methods
from harness import backbones
from harness.config import load_experiment
from harness.data.views import spatial_crops, temporal_starts
from harness.eval.finetune import classifier_optimizer
from harness.eval.spec import FinetuneSpec, LinearSlowFastSpec, load_benchmark
from harness.schema import ConfigError
from harness.study.spec import load_study, parse_study
from harness.train.slowfast_batch import bn_videos, moco_queue_span_steps, slowfast_batch_note

REPO = Path(__file__).resolve().parents[2]
FULL = sorted((REPO / "studies" / "full").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _data(monkeypatch):
    monkeypatch.setenv("RHO_DATA", "/nonexistent")


def _trials(path: Path):
    spec = load_study(path, check_files=False)
    return spec, [spec.experiment(p.overrides, p.seed, check_files=False) for p in spec.points()]


# 1. The objective: SlowFast's linear protocol, the cached probe as a second metric


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.stem)
def test_full_scale_objectives_are_slowfasts_linear_protocol(path):
    spec, trials = _trials(path)
    if path.stem == "lr_search":  # the search ranks on the cached probe on purpose (its file says why)
        assert spec.objective_metric == "eval.k400.linear.top1"
        assert "not SlowFast's protocol" in path.read_text()
        return
    assert spec.objective_metric == "eval.k400.linear_slowfast.top1"
    for experiment in trials:
        protocols = [
            load_benchmark(REPO / b, check_files=False).metric("top1") for b in experiment.eval.benchmarks
        ]
        assert protocols[0] == spec.objective_metric
        assert "eval.k400.linear.top1" in protocols, "the cached probe stays, as a second metric"


# 2. Per-rank batch: BatchNorm over SlowFast's videos, ρMoCo's queue over SlowFast's steps


def test_full_scale_batch_norm_and_moco_queue_are_slowfasts_on_one_8_gpu_machine():
    """SlowFast: 8 videos per GPU; BN over 8 GPUs (64 videos) for BYOL/SimCLR/SwAV
    (BYOL_SlowR50_8x8.yaml:50-51), per GPU (8) for MoCo; MoCo's queue is rank 0's last 65536
    keys (contrastive.py:255-281 + DDP broadcast_buffers): 65536 / (8 ρ) steps."""
    _, trials = _trials(REPO / "studies" / "full" / "clips.yaml")
    world, local = 8, 512 // 8  # --gpus-per-trial 8, data.batch_size 512
    steps_per_epoch = 240_000 // 512
    for experiment in trials:
        name = experiment.method.name
        if name not in ("byol", "simclr", "swav", "moco"):
            continue
        assert bn_videos(experiment, world, local) == (8 if name == "moco" else 64), name
        if name == "moco":
            span = moco_queue_span_steps(experiment, world, local)
            assert span == 65536 / (8 * experiment.data.clips)
            if experiment.data.clips == 2:
                assert span / steps_per_epoch == pytest.approx(8.7, abs=0.1)
        assert slowfast_batch_note(experiment, world, local, steps_per_epoch) is None


def test_launch_note_names_per_rank_batch_bn_group_and_queue_span_when_they_differ():
    _, trials = _trials(REPO / "studies" / "full" / "clips.yaml")
    moco = next(e for e in trials if e.method.name == "moco" and e.data.clips == 2)
    old = copy.deepcopy(moco)
    old.method.params.pop("rank_videos")  # the study before this fix: 64 per GPU, 1/8 of the span
    note = slowfast_batch_note(old, 8, 64, 468)
    assert "per-rank batch 64 videos (SlowFast 8 per GPU)" in note
    assert "BatchNorm over 64 videos (SlowFast 8" in note
    assert "MoCo queue spans 512 steps = 1.09 epochs" in note and "4096 steps" in note
    byol = next(e for e in trials if e.method.name == "byol")
    synced = copy.deepcopy(byol)
    synced.backbone.sync_bn, synced.backbone.sync_bn_group = True, 8
    assert "BatchNorm over 512 videos (SlowFast 64" in slowfast_batch_note(synced, 8, 64, 468)
    assert slowfast_batch_note(synced, 64, 8, 468) is None, "64 GPUs of 8, groups of 8: SlowFast's"


def test_rank_videos_forwards_sub_batches_of_eight_and_enqueues_eight_videos():
    """One rank of 16 videos with rank_videos 8 computes what two SlowFast GPUs of 8 compute:
    the query of each video as its own GPU's forward (per-GPU BN), rank 0's 8 videos' keys queued."""
    torch.manual_seed(0)
    backbone, feature_dim = backbones.build("r3d_tiny", width=4)
    method = methods.build(
        "moco",
        backbone,
        feature_dim,
        hidden_dims=(32,),
        out_dim=16,
        queue_size=64,
        queue_per_rank=True,
        rank_videos=8,
        shuffle_bn=False,
        head_batch_norm=True,
    )
    clips = torch.randn(16, 2, 3, 4, 16, 16)
    method.train()
    with torch.no_grad():
        ours = method._query(clips[:, 0])
        gpus = [method._query.__func__(_plain(method), clips[i : i + 8, 0]) for i in (0, 8)]
        whole = torch.nn.functional.normalize(method.head(method.backbone(clips[:, 0])), dim=-1)
    torch.testing.assert_close(ours, torch.cat(gpus))
    assert not torch.allclose(ours, whole, atol=1e-4), "BN over 16 is another function"
    before = int(method.queue.pointer)
    method.enqueue_keys(torch.randn(16, 2, 16), torch.arange(16))
    assert int(method.queue.pointer) - before == 8 * 2
    assert method.queue.videos[before : before + 16].tolist() == list(range(8)) * 2


def _plain(method):
    plain = copy.copy(method)
    plain.rank_videos = None
    return plain


# 3. Per-ρ learning rates


def test_clips_study_takes_slowfasts_lr_per_method_and_rho():
    """BYOL_SlowR50_8x8.yaml:54-55 (0.6; "1.2 # for rho=4 clips"), SimCLR_SlowR50_8x8.yaml:48-49
    (the later BASE_LR, 1.2), SwAV:46 (0.6), MoCo:50-51 (0.1)."""
    _, trials = _trials(REPO / "studies" / "full" / "clips.yaml")
    lr = {(e.method.name, e.data.clips): e.optim.lr for e in trials}
    for rho in (1, 2, 3, 4):
        assert lr["byol", rho] == (1.2 if rho == 4 else 0.6)
        assert (lr["simclr", rho], lr["swav", rho], lr["moco", rho]) == (1.2, 0.6, 0.1)


def _spec(**extra):
    base = {"method": {"name": "byol"}, "data": {"clips": 2}, "optim": {"lr": 0.6}}
    return {"name": "rules", "experiment": base, "grid": {"data.clips": [2, 4]}, **extra}


def test_per_point_rules_apply_where_all_when_values_match_and_a_trials_own_value_wins():
    spec = parse_study(
        _spec(
            per_point=[{"when": {"method.name": "byol", "data.clips": 4}, "set": {"optim.lr": 1.2}}],
            baselines=[{"data.clips": 4, "optim.lr": 0.3}],
        ),
        check_files=False,
    )
    lrs = [
        (p.overrides, spec.experiment(p.overrides, p.seed, check_files=False).optim.lr) for p in spec.points()
    ]
    assert [lr for _, lr in lrs] == [0.6, 1.2, 0.3]
    plain = parse_study(_spec(), check_files=False)
    assert spec.fingerprint() != plain.fingerprint(), "a changed rule is a changed study"


@pytest.mark.parametrize(
    "rules, key",
    [
        ({"when": {"method.name": "byol"}, "set": {"optim.lr": 1.0}}, "per_point"),  # not a list
        ([{"when": {"method.name": "byol"}}], "per_point[0].set"),
        ([{"when": {}, "set": {"optim.lr": 1.0}}], "per_point[0].when"),
        ([{"when": {"data.clips": 3}, "set": {"optim.lr": 1.0}}], "per_point[0].when"),  # matches no trial
        ([{"when": {"data.clips": 4}, "set": {"optim.lr": 1.0}, "if": 1}], "per_point[0].if"),
        ([{"when": {"data.clips": 4}, "set": {"optim.lr": -1.0}}], "optim.lr"),
    ],
)
def test_per_point_rules_are_validated_at_load(rules, key):
    with pytest.raises(ConfigError) as error:
        parse_study(_spec(per_point=rules), check_files=False)
    assert error.value.key == key


# 4. Decode size per method


def test_simclr_and_swav_decode_at_224_byol_and_moco_at_256():
    """kinetics.py:332-334 decodes at TRAIN_JITTER_SCALES[0]: SimCLR_SlowR50_8x8.yaml:35 and
    SwAV_Slow_R50_8x8.yaml:34 [224, 224]; BYOL:41, MoCo:37 [256, 320]."""
    _, trials = _trials(REPO / "studies" / "full" / "clips.yaml")
    for experiment in trials:
        expected = 224 if experiment.method.name in ("simclr", "swav") else 256
        assert experiment.data.decode_short_side == expected, experiment.method.name


# 6. Evaluation: Nesterov, view starts, crop rounding


@pytest.mark.parametrize(
    "settings", [LinearSlowFastSpec(), FinetuneSpec()], ids=["linear_slowfast", "finetune"]
)
def test_evaluation_sgd_is_slowfasts_nesterov_sgd(settings):
    """optimizer.py:105-113 ``torch.optim.SGD(..., dampening=0, nesterov=cfg.SOLVER.NESTEROV)``,
    defaults.py:842 True; neither linear_k400 nor finetune_ucf sets it."""
    torch.manual_seed(0)
    ours_model = nn.Linear(6, 3)
    theirs_model = copy.deepcopy(ours_model)
    ours = classifier_optimizer(ours_model, settings)
    theirs = torch.optim.SGD(
        theirs_model.parameters(), lr=settings.lr, momentum=settings.momentum, dampening=0.0, nesterov=True
    )
    for step in range(3):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
        for model, optimizer in ((ours_model, ours), (theirs_model, theirs)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            if settings.weight_decay:  # ours: none on the bias; SlowFast's wd on the weight only here
                model.weight.grad += settings.weight_decay * model.weight.detach()
            optimizer.step()
    if not settings.weight_decay:
        torch.testing.assert_close(ours_model.weight, theirs_model.weight)
    assert all(group["nesterov"] for group in ours.param_groups)


def slowfast_test_start(video_size: int, clip_size: int, clip_idx: int, num_clips: int) -> int:
    """decoder.py:59-73 (``USE_OFFSET_SAMPLING`` False, defaults.py:707): ``delta * clip_idx /
    num_clips``, a float start; decoder.py:17-34 ``temporal_sampling`` truncates
    ``linspace(start, start + clip_size - 1, T)``, whose first index is ``int(start)``."""
    delta = max(video_size - clip_size, 0)
    return int(delta * clip_idx / num_clips)


@pytest.mark.parametrize("frames", [64, 100, 250, 301, 1000])
def test_ten_test_view_starts_are_slowfasts(frames):
    starts = temporal_starts(frames, 64, 10)
    assert starts.tolist() == [slowfast_test_start(frames, 64, i, 10) for i in range(10)]


def slowfast_uniform_crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """transform.py:226-238: centre ``ceil((length - size) / 2)``; index 0 / 2 the two ends of the long side."""
    y, x = int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2))
    offsets = []
    for index in range(3):
        if height > width:
            offsets.append(({0: 0, 1: y, 2: height - size}[index], x))
        else:
            offsets.append((y, {0: 0, 1: x, 2: width - size}[index]))
    return offsets


@pytest.mark.parametrize("shape", [(256, 341), (256, 455), (341, 256), (257, 256), (256, 256)])
def test_test_crops_are_slowfasts_uniform_crop(shape):
    height, width = shape
    video = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    crops = spatial_crops(video, 224, 3)
    for crop, (y, x) in zip(crops, slowfast_uniform_crop_offsets(height, width, 224), strict=True):
        assert crop[0, 0, 0, 0].item() == y * width + x
    centre = spatial_crops(video, 224, 1)[0]
    y, x = slowfast_uniform_crop_offsets(height, width, 224)[1]
    assert centre[0, 0, 0, 0].item() == y * width + x


def test_one_view_stays_the_centre_clip():
    """Our cached probe's one training clip (SlowFast's formula would give start 0 for one view)."""
    assert temporal_starts(300, 64, 1).tolist() == [118]
    assert np.array_equal(temporal_starts(30, 64, 10), np.zeros(10, dtype=np.int64))


def test_full_scale_base_experiment_loads_with_per_gpu_batch_norm():
    experiment = load_experiment(REPO / "studies" / "experiments" / "k400_slow_r50.yaml", check_files=False)
    assert not experiment.backbone.sync_bn and experiment.data.batch_size == 512
