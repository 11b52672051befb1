"""The decoder's cheap path on short-GOP and all-intra files: the same frames, far fewer decoded.

``decode_times`` with ``seek_threshold=None`` (the default) reads the container's keyframe
index: on streams whose keyframes lie at most ``SHORT_GOP_FRAMES`` apart it seeks wherever a
keyframe saves decoding, on long GOPs it keeps the one-second gap rule. These tests hold the
frame-exact guarantee on every GOP shape (the reference is the whole video decoded in order)
and measure the saving in compressed bytes demuxed, which counts the frames decoded.
"""

from __future__ import annotations

import numpy as np
import pytest
from videos import index_frame, read_index

from harness.data.decode import (
    SHORT_GOP_FRAMES,
    BytesRead,
    _keyframe_indices,
    decode_times,
    decode_video,
    keyframe_spacing,
    open_video,
)
from harness.data.encode import write_video

FRAMES = 150  # 15 s at 10 fps


@pytest.fixture(scope="module")
def gop_videos(tmp_path_factory):
    """Index videos (frame i shows i) at several GOP shapes: (gop, B-frames) by name."""
    folder = tmp_path_factory.mktemp("gop")
    shapes = {"intra": (1, False), "gop4": (4, False), "gop12_b": (12, True), "x264": (None, True)}
    return {
        name: write_video(
            folder / f"{name}.mp4", (index_frame(i) for i in range(FRAMES)), fps=10, gop=gop, b_frames=b
        )
        for name, (gop, b) in shapes.items()
    }


def decode(path, times, threshold=None, read=None):
    with open_video(path) as container:
        return decode_times(container, times, seek_threshold=threshold, read=read)


@pytest.mark.parametrize("name", ["intra", "gop4", "gop12_b", "x264"])
def test_every_gop_shape_gives_the_frames_a_full_decode_shows(gop_videos, name):
    path = gop_videos[name]
    reference = decode_video(path)
    rng = np.random.default_rng(3)
    # clips of 4 frames at stride 3 (sparse), repeats, out of order, and times past the end
    starts = rng.uniform(0, 13, size=6)
    times = np.concatenate([s + np.arange(4) * 0.3 for s in starts] + [[2.0, 2.0, 0.0, 14.9, 16.0]])
    times = times[rng.permutation(len(times))]
    frames, padded = decode(path, times)
    expected, expected_padded = reference.at(times)
    assert np.array_equal(frames, expected)
    assert [read_index(f) for f in frames] == [min(FRAMES - 1, round(t * 10)) for t in times]
    assert padded == expected_padded == 1


def test_the_index_tells_short_gops_from_long_ones(gop_videos):
    spacing = {}
    for name, path in gop_videos.items():
        with open_video(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            spacing[name] = keyframe_spacing(
                _keyframe_indices(stream, fps, stream.start_time or 0, stream.time_base)
            )
    assert spacing["intra"] == 1 and spacing["gop4"] == 4 and spacing["gop12_b"] == 12
    assert spacing["x264"] > SHORT_GOP_FRAMES  # 150 frames under x264's 250: one keyframe
    assert keyframe_spacing(None) == float("inf")


def test_all_intra_decodes_only_the_frames_a_sparse_clip_needs(gop_videos):
    # one 8-frame clip at stride 8 (0.8 s apart at 10 fps) over 6.4 s: 8 of 64 frames
    times = 4.0 + np.arange(8) * 0.8
    auto, forward = BytesRead(), BytesRead()
    frames, _ = decode(gop_videos["intra"], times, None, auto)
    same, _ = decode(gop_videos["intra"], times, 100.0, forward)  # the gap rule: decode forward
    assert np.array_equal(frames, same)
    # all-intra frames are near the same size: bytes demuxed count frames decoded
    assert auto.count * 4 < forward.count, (auto.count, forward.count)


def test_short_gop_seeks_per_gop_and_long_gop_keeps_the_gap_rule(gop_videos):
    times = np.arange(8) * 0.8  # gaps under the gap rule's second: it decodes every frame to 5.6 s
    for name, cheaper in (("gop4", True), ("x264", False)):
        auto, forward = BytesRead(), BytesRead()
        decode(gop_videos[name], times, None, auto)
        decode(gop_videos[name], times, 100.0, forward)
        if cheaper:
            assert auto.count * 1.5 < forward.count, (name, auto.count, forward.count)
        else:  # one GOP: nothing to seek to, the same packets as decoding forward
            assert auto.count == forward.count, (name, auto.count, forward.count)


def test_a_number_keeps_the_gap_rule_on_short_gops(gop_videos):
    # seek_threshold 100 s: never seek, so every frame up to the last one asked is demuxed
    read = BytesRead()
    decode(gop_videos["intra"], np.array([0.0, 9.0]), 100.0, read)
    whole = BytesRead()
    decode(gop_videos["intra"], np.arange(0, 9.05, 0.1), 100.0, whole)
    assert read.count == whole.count
