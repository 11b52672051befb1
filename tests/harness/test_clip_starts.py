"""Clip-start sampling: t_max is respected (start to start, or SlowFast's gap), global sampling covers the
video, starts come back in time order and ``clip_order`` permutes them."""

import numpy as np
import pytest

from harness.data.clip_starts import (
    ClipTiming,
    clip_gaps,
    clip_order,
    clip_starts,
    gap_clip_starts,
    grid_length,
)


def draws(n, **kwargs):
    rng = np.random.default_rng(0)
    return np.stack([clip_starts(rng=rng, **kwargs) for _ in range(n)])


@pytest.mark.parametrize("t_max_frames", [0, 5, 30, 1000])
def test_no_two_starts_further_apart_than_t_max(t_max_frames):
    starts = draws(2000, num_frames=300, clips=4, span=16, t_max_frames=t_max_frames)
    spread = starts.max(1) - starts.min(1)
    assert spread.max() <= min(t_max_frames, 300 - 16)
    assert starts.min() >= 0 and starts.max() <= 300 - 16
    if 0 < t_max_frames < 300:
        # the bound is reached, not just respected: the window is used in full
        assert spread.max() >= 0.9 * t_max_frames
    if t_max_frames == 0:
        assert (spread == 0).all()


def test_global_sampling_reaches_the_whole_video():
    starts = draws(3000, num_frames=200, clips=2, span=15, t_max_frames=None)
    assert starts.min() == 0 and starts.max() == 200 - 15
    counts = np.bincount(starts.ravel(), minlength=186)
    # uniform: every start position is drawn, none more than ~2x its expected share
    assert (counts > 0).all() and counts.max() < 2.2 * counts.mean()


def test_windowed_starts_cover_the_whole_video_too():
    starts = draws(3000, num_frames=200, clips=2, span=15, t_max_frames=20)
    assert starts.min() == 0 and starts.max() == 185


def test_starts_are_sorted_and_short_videos_start_at_zero():
    starts = draws(200, num_frames=300, clips=4, span=16, t_max_frames=None)
    assert (np.diff(starts, axis=1) >= 0).all()
    short = draws(10, num_frames=5, clips=3, span=16, t_max_frames=None)
    assert (short == 0).all()


def test_clip_timing():
    timing = ClipTiming(frames=4, stride=3, fps=10.0)
    assert timing.span == 10
    np.testing.assert_allclose(timing.frame_times(5), [0.5, 0.8, 1.1, 1.4])
    assert grid_length(4.0, 16) == 64 and grid_length(0.01, 10) == 1


def test_clip_gaps_run_from_a_clip_s_last_frame_to_the_next_clip_s_first():
    # clips of span 10 starting at 30, 0, 12: in time 0..9, 12..21, 30..39 -> gaps 3 and 9
    assert clip_gaps(np.array([30, 0, 12]), 10).tolist() == [3, 9]
    assert clip_gaps(np.array([5, 5]), 10).tolist() == [-9]  # the same start: full overlap


def test_gap_starts_are_sorted_deterministic_and_short_videos_start_at_zero():
    one = gap_clip_starts(300, 4, 16, 0, 20, np.random.default_rng(3))
    assert (np.diff(one) >= 0).all() and (clip_gaps(one, 16) >= 0).all() and (clip_gaps(one, 16) <= 20).all()
    assert (gap_clip_starts(300, 4, 16, 0, 20, np.random.default_rng(3)) == one).all()
    # a video shorter than a clip cannot meet a gap of >= 0: the fallback still gives valid starts
    assert (gap_clip_starts(5, 3, 16, 0, 20, np.random.default_rng(0)) == 0).all()


def test_clip_order_time_keeps_and_shuffled_permutes():
    rng = np.random.default_rng(0)
    assert clip_order(3, "time", rng).tolist() == [0, 1, 2]
    orders = {tuple(clip_order(3, "shuffled", rng)) for _ in range(200)}
    assert len(orders) == 6 and all(sorted(o) == [0, 1, 2] for o in orders)
    with pytest.raises(ValueError, match="time, shuffled"):
        clip_order(3, "random", rng)
