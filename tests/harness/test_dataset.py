"""MultiClipDataset on real mp4 files whose frames show their own index."""

import logging

import numpy as np
import pytest
import torch
from bad_files import warnings_per_file, write_bad_videos
from videos import read_index, write_index_video

from harness.data import MultiClipDataset, train_transform, write_manifest
from harness.data.encode import write_video


def clip_indices(clip: torch.Tensor) -> list[int]:
    """Frame indices drawn in a [3, T, H, W] clip in [0, 1]."""
    return [read_index(clip[:, t].numpy()) for t in range(clip.shape[1])]


@pytest.mark.parametrize("rho", [1, 2, 4])
@pytest.mark.parametrize("t_max", [None, 0.0, 1.5])
def test_clips_hold_exactly_the_requested_frames(index_manifest, rho, t_max):
    frames, stride, fps = 4, 3, 10
    dataset = MultiClipDataset(index_manifest, clips=rho, frames=frames, stride=stride, t_max=t_max, seed=3)
    for epoch in range(4):
        for index in range(len(dataset)):
            item = dataset[(epoch, index)]
            clips, starts = item["clips"], item["starts"]
            assert clips.shape == (max(rho, 2), 3, frames, 64, 64)
            assert starts.shape == (max(rho, 2),) and item["padded"] == 0
            for v in range(clips.shape[0]):
                first = int(round(float(starts[v]) * fps))
                assert clip_indices(clips[v]) == [first + stride * j for j in range(frames)]
            assert (torch.diff(starts) >= 0).all(), "clips come in temporal order"
            if t_max is not None:
                assert float(starts.max() - starts.min()) <= t_max + 1e-6
            if rho == 1:
                assert starts[0] == starts[1]


def test_one_view_items_hold_one_clip_with_the_requested_frames(index_manifest):
    two = MultiClipDataset(index_manifest, clips=1, frames=4, stride=3, seed=3)
    one = MultiClipDataset(index_manifest, clips=1, frames=4, stride=3, seed=3, min_views=1)
    assert (one.views, two.views) == (1, 2)
    for index in range(len(one)):
        item, pair = one[(0, index)], two[(0, index)]
        assert item["clips"].shape == (1, 3, 4, 64, 64) and item["starts"].shape == (1,)
        assert item["starts"][0] == pair["starts"][0]  # the same clip; only the second view is gone
        first = int(round(float(item["starts"][0]) * 10))
        assert clip_indices(item["clips"][0]) == [first + 3 * j for j in range(4)]
    assert MultiClipDataset(index_manifest, clips=3, frames=2, stride=1, min_views=1).views == 3
    with pytest.raises(ValueError, match="min_views must be 1 or 2"):
        MultiClipDataset(index_manifest, clips=1, frames=2, stride=1, min_views=0)


def test_target_fps_resamples_the_grid(index_manifest):
    dataset = MultiClipDataset(index_manifest, clips=2, frames=5, stride=1, fps=5.0)
    item = dataset[0]
    for v in range(2):
        first = int(round(float(item["starts"][v]) * 10))
        assert clip_indices(item["clips"][v]) == [first + 2 * j for j in range(5)]


def test_t_max_over_many_draws_and_global_reaches_the_end(index_manifest):
    windowed = MultiClipDataset(index_manifest, clips=3, frames=2, stride=1, t_max=1.0)
    global_ = MultiClipDataset(index_manifest, clips=3, frames=2, stride=1)
    spreads, last_starts = [], []
    for epoch in range(60):
        starts = windowed[(epoch, 0)]["starts"]
        spreads.append(float(starts.max() - starts.min()))
        last_starts.append(float(global_[(epoch, 0)]["starts"].max()))
    assert max(spreads) <= 1.0 + 1e-6 and max(spreads) >= 0.7
    assert max(last_starts) >= 9.0  # the 10 s video's last possible start is 9.8 s


def test_items_are_deterministic_per_seed_epoch_and_index(index_manifest):
    dataset = MultiClipDataset(
        index_manifest, clips=2, frames=4, stride=2, transform=train_transform(32), seed=5
    )
    a, b = dataset[(1, 0)], dataset[(1, 0)]
    assert torch.equal(a["clips"], b["clips"]) and torch.equal(a["starts"], b["starts"])
    other_epochs = [dataset[(e, 0)]["starts"] for e in range(2, 8)]
    assert any(not torch.equal(a["starts"], s) for s in other_epochs)
    state = torch.get_rng_state()
    dataset[0]
    assert torch.equal(state, torch.get_rng_state()), "items must not consume the caller's torch RNG"


def test_augmentation_is_per_clip_and_identical_across_frames(tmp_path):
    rng = np.random.default_rng(0)
    still = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    video = write_video(tmp_path / "still.mp4", [still] * 40, fps=10, crf=0)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(video), "label": 0}])
    dataset = MultiClipDataset(manifest, clips=1, frames=6, stride=2, transform=train_transform(32))
    for epoch in range(5):
        clips = dataset[(epoch, 0)]["clips"]
        assert clips.shape == (2, 3, 6, 32, 32)
        for v in range(2):  # every frame of a clip got the same crop, flip and colour
            assert torch.allclose(clips[v], clips[v][:, :1].expand_as(clips[v]), atol=1e-5)
        assert not torch.allclose(clips[0], clips[1], atol=1e-3), "the two views differ"


def test_short_video_repeats_its_last_frame_and_counts_it(index_videos, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(index_videos["short"]), "label": 0}])
    item = MultiClipDataset(manifest, clips=2, frames=8, stride=2)[0]  # span 15 > 12 frames
    assert item["padded"] == 2 * 2  # frames 12 and 14 of each clip do not exist
    for v in range(2):
        assert clip_indices(item["clips"][v]) == [0, 2, 4, 6, 8, 10, 11, 11]


def test_unreadable_videos_are_skipped_counted_and_logged(index_videos, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01not a video" * 100)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(index_videos["long"].read_bytes()[:3000])
    empty = tmp_path / "empty.mp4"
    empty.touch()
    rows = [{"path": str(p), "label": 0} for p in (corrupt, truncated, empty)]
    rows.append({"path": str(index_videos["long"]), "label": 4})
    dataset = MultiClipDataset(write_manifest(tmp_path / "m.csv", rows), clips=2, frames=4, stride=2)
    with caplog.at_level(logging.WARNING):
        item = dataset[0]
    assert item["label"] == 4 and item["index"] == 3 and item["skipped"] == 3
    assert dataset.bad_files == {corrupt, truncated, empty}
    assert sum("skipping unreadable video" in r.getMessage() for r in caplog.records) == 3
    with caplog.at_level(logging.WARNING):
        dataset[1]
    assert sum("skipping unreadable video" in r.getMessage() for r in caplog.records) == 3, (
        "warn once per file"
    )


def test_all_bad_raises_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk")
    dataset = MultiClipDataset(write_manifest(tmp_path / "m.csv", [{"path": str(bad), "label": 0}]), 2, 4, 2)
    with pytest.raises(RuntimeError, match="rho data check"):
        dataset[0]


def test_decoding_with_seeks_equals_decoding_forward(index_videos):
    from harness.data.decode import decode_times, open_video

    times = np.array([9.5, 0.3, 4.4, 4.6, 7.0, 2.0, 9.9, 12.0])
    for path in (index_videos["long"], index_videos["one_gop"]):
        results = []
        for threshold in (0.0, 0.5, 100.0):
            container = open_video(path)
            frames, padded = decode_times(container, times, seek_threshold=threshold)
            container.close()
            results.append(([read_index(f) for f in frames], padded))
        expected = [95, 3, 44, 46, 70, 20, 99, min(120, 149 if path == index_videos["one_gop"] else 99)]
        assert all(r[0] == expected for r in results), results
        assert all(r[1] == (1 if path == index_videos["long"] else 0) for r in results)


def test_windowed_entries_sample_inside_their_window(index_videos, tmp_path):
    rows = [{"path": str(index_videos["long"]), "label": 0, "start": 3.0, "end": 6.0}]
    dataset = MultiClipDataset(write_manifest(tmp_path / "m.csv", rows), clips=2, frames=4, stride=2)
    for epoch in range(30):
        item = dataset[(epoch, 0)]
        for v in range(2):
            indices = clip_indices(item["clips"][v])
            assert indices[0] >= 30 and indices[-1] < 60
            assert indices[0] == int(round(float(item["starts"][v]) * 10))


def test_write_index_video_roundtrip(tmp_path):
    import av

    path = write_index_video(tmp_path / "v.mp4", 30, fps=10)
    with av.open(str(path)) as container:
        decoded = [read_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert decoded == list(range(30))


@pytest.mark.parametrize("fps", [None, 5.0])
def test_frame_cache_gives_the_same_items_and_decodes_each_video_once(index_videos, tmp_path, fps):
    from harness.data.decode import FrameCache

    rows = [
        {"path": str(index_videos["long"]), "label": 0},
        {"path": str(index_videos["short"]), "label": 1},  # shorter than a clip: padding counts too
        {"path": str(index_videos["one_gop"]), "label": 2, "start": 3.0, "end": 6.0},
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    transform = train_transform(32)
    plain = MultiClipDataset(manifest, clips=3, frames=8, stride=2, transform=transform, seed=5, fps=fps)
    cache = FrameCache()
    cached = MultiClipDataset(
        manifest, clips=3, frames=8, stride=2, transform=transform, seed=5, fps=fps, cache=cache
    )
    cached.preload()
    assert len(cache) == 3 and cache.nbytes == (100 + 12 + 150) * 64 * 64 * 3
    for epoch in range(3):
        for index in range(3):
            a, b = plain[(epoch, index)], cached[(epoch, index)]
            assert torch.equal(a["clips"], b["clips"]) and torch.equal(a["starts"], b["starts"])
            assert a["padded"] == b["padded"]
    assert cached[(0, 1)]["padded"] > 0


def test_frame_cache_refuses_past_its_limit_and_preload_skips_bad_videos(index_videos, tmp_path):
    from harness.data.decode import CacheFull, FrameCache

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk")
    rows = [{"path": str(bad), "label": 0}, {"path": str(index_videos["short"]), "label": 1}]
    dataset = MultiClipDataset(
        write_manifest(tmp_path / "m.csv", rows), 2, 4, 2, cache=FrameCache(limit_bytes=10**6)
    )
    dataset.preload()
    assert dataset.bad_files == {bad} and len(dataset.cache) == 1
    full = FrameCache(limit_bytes=12 * 64 * 64 * 3 - 1)
    with pytest.raises(CacheFull, match=r"short\.mp4.*past the cache's"):
        full.get(index_videos["short"])
    assert len(full) == 0 and full.nbytes == 0


def test_bad_files_are_called_truncated_empty_or_not_a_video(index_videos, tmp_path, caplog):
    """The message names the kind of damage in words, not FFmpeg's errno text."""
    bad = write_bad_videos(tmp_path, index_videos["long"])
    rows = [{"path": str(p), "label": 0} for p in bad.values()]
    dataset = MultiClipDataset(
        write_manifest(tmp_path / "m.csv", [*rows, {"path": str(index_videos["long"]), "label": 4}]), 2, 4, 2
    )
    with caplog.at_level(logging.WARNING):
        assert dataset[0]["skipped"] == 3
    by_kind = warnings_per_file([r.getMessage() for r in caplog.records], bad)
    for kind, lines in by_kind.items():
        assert len(lines) == 1 and f"{bad[kind]}: {kind} (" in lines[0], (kind, lines)
        assert "errno" not in lines[0].lower() and "Invalid data" not in lines[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_bad_file_is_warned_once_per_run_across_epochs_and_workers(
    index_videos, tmp_path, caplog, workers
):
    """Two epochs through a DataLoader (fresh workers each epoch): the process reading the batches
    warns once per bad file and counts each once; the items' ``skipped`` are per item."""
    bad = write_bad_videos(tmp_path, index_videos["long"])
    rows = [{"path": str(p), "label": 0} for p in bad.values()]
    rows += [{"path": str(index_videos[name]), "label": 1} for name in ("long", "short", "one_gop")]
    dataset = MultiClipDataset(write_manifest(tmp_path / "m.csv", rows), clips=2, frames=4, stride=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers)
            skipped = sum(int(batch["skipped"].sum()) for batch in map(dataset.note_skips, loader))
            assert skipped == 3 + 2 + 1  # rows 0, 1, 2 each pass over the bad rows up to row 3
    assert dataset.bad_files == set(bad.values())
    by_kind = warnings_per_file([r.getMessage() for r in caplog.records], bad)
    assert {kind: len(lines) for kind, lines in by_kind.items()} == dict.fromkeys(bad, 1)
