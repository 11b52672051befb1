"""Evaluation views: evenly spaced temporal clips × 1 or 3 spatial crops, deterministic."""

import numpy as np
import torch
from videos import read_index

from harness.data import write_manifest
from harness.data.encode import write_video
from harness.data.transforms import MEAN, STD
from harness.data.views import ViewDataset, temporal_starts


def test_temporal_starts_are_evenly_spaced_and_centred():
    assert temporal_starts(100, 10, 1).tolist() == [45]
    assert temporal_starts(100, 10, 4).tolist() == [0, 30, 60, 90]
    assert temporal_starts(5, 10, 3).tolist() == [0, 0, 0]


def test_views_hold_the_planned_frames(index_manifest):
    dataset = ViewDataset(index_manifest, frames=4, stride=2, crop=64, short_side=64, temporal_views=3)
    item = dataset[0]  # 100 frames, span 7 -> starts 0, 46, 93
    assert item["clips"].shape == (3, 3, 4, 64, 64)
    for view, start in zip(item["clips"], [0, 46, 93], strict=True):
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
