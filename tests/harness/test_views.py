"""Evaluation views: evenly spaced temporal clips × 1 or 3 spatial crops, deterministic."""

import numpy as np
import torch
from videos import read_index

from harness.data import write_manifest
from harness.data.encode import write_video
from harness.data.transforms import MEAN, STD
from harness.data.views import UNREADABLE, ViewDataset, collate_views, temporal_starts


def test_temporal_starts_are_evenly_spaced_and_centred():
    assert temporal_starts(100, 10, 1).tolist() == [45]
    assert temporal_starts(100, 10, 4).tolist() == [0, 22, 45, 67]  # SlowFast: 90 * i / 4, truncated
    assert temporal_starts(5, 10, 3).tolist() == [0, 0, 0]


def test_views_hold_the_planned_frames(index_manifest):
    dataset = ViewDataset(index_manifest, frames=4, stride=2, crop=64, short_side=64, temporal_views=3)
    item = dataset[0]  # 100 frames, span 7 -> starts 93 * i / 3: 0, 31, 62
    assert item["clips"].shape == (3, 3, 4, 64, 64)
    for view, start in zip(item["clips"], [0, 31, 62], strict=True):
        unnormalised = view * torch.tensor(STD).view(3, 1, 1, 1) + torch.tensor(MEAN).view(3, 1, 1, 1)
        assert [read_index(unnormalised[:, t].numpy()) for t in range(4)] == [start + 2 * j for j in range(4)]
    assert torch.equal(item["clips"], dataset[0]["clips"]), "deterministic"


def test_three_spatial_crops_cover_the_long_side(tmp_path):
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[:, :, 0] = np.linspace(0, 255, 128).astype(np.uint8)[None, :]  # red ramp left -> right
    video = write_video(tmp_path / "wide.mp4", [frame] * 20, fps=10, crf=0)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(video), "label": 2}])
    item = ViewDataset(manifest, frames=2, stride=1, crop=32, short_side=32, spatial_views=3)[0]
    assert item["clips"].shape == (3, 3, 2, 32, 32) and item["label"] == 2
    red = item["clips"][:, 0].mean(dim=(1, 2, 3))
    assert red[0] < red[1] < red[2], "left, centre, right"
    centre = ViewDataset(manifest, frames=2, stride=1, crop=32, short_side=32)[0]["clips"]
    assert torch.allclose(centre[0], item["clips"][1])


def test_an_unreadable_video_gives_an_item_that_says_why_and_the_batch_lists_it(index_videos, tmp_path):
    truncated, empty = tmp_path / "truncated.mp4", tmp_path / "empty.mp4"
    data = index_videos["short"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    rows = [{"path": str(p), "label": i} for i, p in enumerate([index_videos["short"], truncated, empty])]
    dataset = ViewDataset(
        write_manifest(tmp_path / "m.csv", rows), frames=2, stride=1, crop=64, short_side=64
    )
    items = [dataset[i] for i in range(3)]
    assert "clips" not in items[1] and str(truncated) in items[1][UNREADABLE] and items[1]["label"] == 1
    assert "clips" not in items[2] and str(empty) in items[2][UNREADABLE]
    batch = collate_views(items)
    assert batch["clips"].shape == (1, 1, 3, 2, 64, 64) and batch["index"].tolist() == [0]
    assert batch["label"].tolist() == [0] and set(batch[UNREADABLE]) == {1, 2}
    assert "clips" not in collate_views(items[1:]), "a batch of unreadable videos only"
