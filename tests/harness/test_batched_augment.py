"""Batched augmentation (``data.augment.placement: device``): with the same draws it gives the
per-clip path's clips, op by op and for the whole pipeline; its draws follow the configured
distributions; training with it works in one process and under DDP."""

import math

import pytest
import torch
from mlflow import MlflowClient
from tiny_data import tiny_experiment_tree
from torchvision.transforms import v2

from harness.checkpoint import load_checkpoint
from harness.config import AugmentConfig, ConfigError, build_experiment
from harness.data.batched import DRAWS, FRAMES, BatchedAugment, DeviceAugment, collate_frames
from harness.data.transforms import Draw, train_transform
from harness.train import pretrain, train_dataset

CASES = {
    "crop-flip": AugmentConfig(color_p=0.0, grayscale_p=0.0, flip=0.5),
    "crop-aspect-scale": AugmentConfig(
        crop_scale=[0.05, 1.0], aspect=[0.3, 3.0], color_p=0.0, grayscale_p=0.0
    ),
    "fallback-crop": AugmentConfig(aspect=[3.0, 4.0], crop_scale=[0.9, 1.0], color_p=0.0, grayscale_p=0.0),
    "jitter-with-hue": AugmentConfig(color_p=1.0, grayscale_p=0.0, flip=0.0),
    "hue-only": AugmentConfig(color_p=1.0, color_strength=[0.0, 0.0, 0.0, 0.5], grayscale_p=0.0),
    "grayscale": AugmentConfig(color_p=0.0, grayscale_p=0.5),
    "blur": AugmentConfig(color_p=0.0, grayscale_p=0.0, blur_p=0.7),
    "paper": AugmentConfig(),
    "everything": AugmentConfig(crop_scale=[0.2, 1.0], grayscale_p=0.4, blur_p=0.5),
    "colour-on-the-frame": AugmentConfig(  # SlowFast's: whole-clip contrast mean, sigma in frame pixels
        crop_scale=[0.2, 1.0], color_p=1.0, grayscale_p=0.3, blur_p=0.7, colour_frame="frame"
    ),
}
SOURCES = [(4, 64, 48), (4, 40, 60), (4, 36, 36)]  # clips of different sizes in one batch (padded)


def same_draws(augment: AugmentConfig, crop: int, clips: int = 24):
    """``clips`` random uint8 clips, the per-clip path's output for each (seed i) and the draws of seed i."""
    transform = train_transform(crop, augment)
    generator = torch.Generator().manual_seed(7)
    items, expected = [], []
    for i in range(clips):
        frames, height, width = SOURCES[i % len(SOURCES)]
        clip = torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=generator)
        torch.manual_seed(i)
        draw = transform.draw(height, width, clip)
        torch.manual_seed(i)
        expected.append(transform(clip))
        items.append({FRAMES: clip, DRAWS: draw})
    batch = collate_frames(items)
    return batch[FRAMES], batch[DRAWS], torch.stack(expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("crop", [32, 48])  # shrinking (antialiased) and, for small boxes, enlarging
@pytest.mark.parametrize("resize", BatchedAugment.RESIZES)  # the GPU's matrices, the CPU's kernel
def test_with_the_same_draws_the_batch_equals_the_per_clip_path(case, crop, resize):
    frames, draws, expected = same_draws(CASES[case], crop)
    assert frames.shape == (24, 4, 64, 60, 3), "padded to the batch's largest frame"
    out = BatchedAugment(crop, CASES[case], resize=resize)(frames, draws)
    assert out.shape == expected.shape == (24, 3, 4, crop, crop)
    # the crop is the uint8 kernel's exactly; the float colour steps agree to rounding
    assert (out - expected).abs().max() < 1e-5, case


def test_each_op_was_really_drawn_in_the_cases():
    """The equality test above is only as good as its draws: each case applies what it names."""
    _, draws, _ = same_draws(CASES["everything"], 32, clips=48)
    assert 0 < draws[:, Draw.flip].sum() < 48 and 0 < draws[:, Draw.jitter].sum() < 48
    assert 0 < draws[:, Draw.grayscale].sum() < 48 and 0 < draws[:, Draw.blur].sum() < 48
    jittered = draws[draws[:, Draw.jitter] > 0]
    assert jittered[:, Draw.factors].isfinite().all() and (jittered[:, Draw.factors][:, 3] != 0).all()
    orders = {tuple(row.long().tolist()) for row in jittered[:, Draw.order]}
    assert len(orders) > 5, "the jitter steps come in per-clip random orders"
    _, hue_only, _ = same_draws(CASES["hue-only"], 32)
    assert hue_only[:, Draw.factors][:, :3].isnan().all(), "factors that are off are NaN and skipped"
    _, fallback, _ = same_draws(CASES["fallback-crop"], 32, clips=3)
    assert fallback[:, Draw.box].tolist()[0] == [(64 - 16) // 2, 0, 16, 48], "v2's centre-crop fallback"


def test_the_draws_follow_the_configured_distributions():
    augment = AugmentConfig(crop_scale=[0.2, 0.766], grayscale_p=0.2, blur_p=0.3)
    transform = train_transform(32, augment)
    torch.manual_seed(0)
    draws = torch.stack([transform.draw(120, 160) for _ in range(4000)])
    for column, p in ((Draw.flip, 0.5), (Draw.jitter, 0.8), (Draw.grayscale, 0.2), (Draw.blur, 0.3)):
        assert abs(draws[:, column].mean().item() - p) < 4 * math.sqrt(p * (1 - p) / 4000), column
    top, left, height, width = draws[:, Draw.box].unbind(1)
    area = height * width / (120 * 160)
    assert area.min() > 0.19 and area.max() < 0.78
    assert ((top >= 0) & (left >= 0) & (top + height <= 120) & (left + width <= 160)).all()
    aspect = width / height
    assert aspect.min() > 0.74 and aspect.max() < 1.35 and aspect.std() > 0.1
    jittered = draws[draws[:, Draw.jitter] > 0][:, Draw.factors]
    for factor, (low, high) in zip(jittered.T, [(0.4, 1.6)] * 3 + [(-0.15, 0.15)], strict=True):
        assert low <= factor.min() and factor.max() <= high
        assert abs(factor.mean().item() - (low + high) / 2) < 0.02
    sigma = draws[draws[:, Draw.blur] > 0][:, Draw.sigma]
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0


def test_the_crop_boxes_are_torchvision_random_resized_crops_draw_for_draw():
    transform = train_transform(32, AugmentConfig())
    reference = v2.RandomResizedCrop(32, scale=(0.2, 0.766), ratio=(0.75, 4 / 3))
    frame = torch.zeros(3, 90, 130)
    for seed in range(200):
        torch.manual_seed(seed)
        box = reference.make_params([frame])
        torch.manual_seed(seed)
        assert transform.draw(90, 130)[Draw.box].tolist() == [
            box["top"],
            box["left"],
            box["height"],
            box["width"],
        ]


def test_batched_outputs_match_the_per_clip_outputs_in_distribution():
    """Independent seeds: the two placements give clips with the same statistics."""
    augment = AugmentConfig(blur_p=0.3)
    transform, batched = train_transform(32, augment), BatchedAugment(32, augment)
    clip = torch.randint(
        0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(1)
    per_clip = torch.stack([transform(clip) for _ in range(300)])
    torch.manual_seed(2)
    draws = torch.stack([transform.draw(64, 64) for _ in range(300)])
    together = batched(clip.expand(300, *clip.shape), draws)
    for stat in (lambda x: x.mean(dim=(0, 2, 3, 4)), lambda x: x.std(dim=(2, 3, 4)).mean(0)):
        assert torch.allclose(stat(per_clip), stat(together), atol=0.05)
    assert not torch.allclose(per_clip[:10], together[:10], atol=0.05), "the seeds do differ"


def test_the_deferred_dataset_ships_frames_and_draws_that_augment_to_its_per_clip_items(tiny_synth, tmp_path):
    """Real mp4 files: an item decoded with placement device, augmented as a batch, is the
    per-clip item of the same seed (ρ = 1 included: two draws of one clip; ρ = 3 in time order
    and shuffled, SlowFast's clip order, where frames and draws are reordered together)."""
    for clips, order in ((1, "time"), (3, "time"), (3, "shuffled")):
        tree = tiny_experiment_tree(tiny_synth, tmp_path)
        tree["data"].update(clips=clips, clip_order=order, augment={"blur_p": 0.5, "placement": "device"})
        experiment = build_experiment(tree)
        per_clip = train_dataset(experiment)
        deferred = train_dataset(experiment, deferred=True)
        keys = [(1, 0), (1, 5), (2, 5)]
        items = [deferred[key] for key in keys]
        assert "clips" not in items[0] and items[0][FRAMES].dtype == torch.uint8
        assert items[0][FRAMES].shape[0] == items[0][DRAWS].shape[0] == max(clips, 2)
        batch = DeviceAugment(16, experiment.data.augment, "cpu")(collate_frames(items))
        expected = torch.stack([per_clip[key]["clips"] for key in keys])
        assert batch["clips"].shape == expected.shape and FRAMES not in batch
        assert (batch["clips"] - expected).abs().max() < 1e-5
        assert torch.equal(batch["starts"], torch.stack([per_clip[key]["starts"] for key in keys]))
        if order == "shuffled":  # the order really is shuffled in some item
            assert any(not torch.equal(s, s.sort().values) for s in batch["starts"])


def test_channels_last_layout_gives_each_view_channels_last_3d():
    augment = AugmentConfig()
    frames, draws, expected = same_draws(augment, 32, clips=8)
    batch = {
        FRAMES: frames.view(4, 2, *frames.shape[1:]),
        DRAWS: draws.view(4, 2, -1),
        "label": torch.arange(4),
    }
    out = DeviceAugment(32, augment, "cpu", channels_last=True)(batch)["clips"]
    assert out[:, 1].is_contiguous(memory_format=torch.channels_last_3d)
    assert (out.flatten(0, 1) - expected).abs().max() < 1e-5


def test_placement_is_checked_and_does_not_change_the_training_hash(tiny_synth, tmp_path):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    worker = build_experiment(tree)
    tree["data"]["augment"] = {"placement": "device"}
    device = build_experiment(tree)
    assert device.data.augment.placement == "device"
    assert worker.training_hash() == device.training_hash(), "the same draws: a resumable run either way"
    tree["data"]["augment"] = {"placement": "gpu"}
    with pytest.raises(ConfigError, match="data.augment.placement.*worker, device"):
        build_experiment(tree)


def test_pretraining_with_device_placement_trains_like_the_worker_placement(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"]["workers"] = 1
    worker = pretrain(
        build_experiment(tree), output=tmp_path / "worker", tracking_uri=mlflow_uri, print_progress=False
    )
    tree["data"]["augment"] = {"placement": "device"}
    device = pretrain(
        build_experiment(tree), output=tmp_path / "device", tracking_uri=mlflow_uri, print_progress=False
    )
    assert len(device.history) == 2 and all(0 <= h["data_wait"] <= 1 for h in device.history)
    client = MlflowClient(mlflow_uri)
    assert len(client.get_metric_history(device.run_id, "loss")) == 6  # 12 videos, batch 4, 2 epochs
    assert client.get_run(device.run_id).data.params["data.augment.placement"] == "device"
    worker_loss, device_loss = (
        [m.value for m in client.get_metric_history(r.run_id, "loss")] for r in (worker, device)
    )
    # the first step trains on the same clips to float rounding; the rounding then grows step by
    # step (batch 4, SGD) but stays small
    assert device_loss[0] == pytest.approx(worker_loss[0], rel=1e-5)
    assert device_loss == pytest.approx(worker_loss, rel=1e-2)


@pytest.mark.slow
def test_torchrun_two_ranks_each_augment_their_own_batch(tiny_synth, tmp_path, mlflow_uri):
    from test_ddp import torchrun

    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"]["augment"] = {"placement": "device"}
    out = torchrun(tree, tmp_path, mlflow_uri)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    state = load_checkpoint(tmp_path / "out" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 6
