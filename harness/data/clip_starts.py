"""Where the ρ clips of one video start, and in which order an item holds them.

Clips live on a time grid of ``fps`` frames per second (the video's own rate, or a target
rate). A clip of T frames at stride τ covers grid indices ``s, s+τ, …, s+(T−1)τ``, a span of
``(T−1)τ + 1`` grid frames. Starts are drawn uniformly:

- global sampling (``t_max=None``): each start independently over the whole video;
- ``clip_starts`` with ``t_max`` (``data.t_max_mode: start_to_start``, ours): a window of
  ``t_max`` seconds is placed uniformly in the video and every start is drawn uniformly inside
  it, so no two starts lie more than ``t_max`` apart; ``t_max=0`` gives one start for every clip;
- ``gap_clip_starts`` (``data.t_max_mode: gap``, SlowFast's ``CONTRASTIVE.DELTA_CLIPS_MIN/MAX``,
  ``get_multiple_start_end_idx`` in ``slowfast/datasets/decoder.py``): the gap from the last
  frame of one clip to the first frame of the next one in time is bounded instead, clip by
  clip: each new start is redrawn (up to 100 times) until every gap lies in the bounds.

Both return the starts sorted in time; ``clip_order`` then says in which order the item holds
the clips: ``time`` (earliest first) or ``shuffled`` (a random permutation drawn from the
item's generator, as SlowFast's ``temporally_rnd_clips``), which decides what the methods'
"adjacent pairs" and "the first two clips" are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.config import CLIP_ORDERS


@dataclass(frozen=True)
class ClipTiming:
    """Frames per clip, stride and the grid's frame rate."""

    frames: int
    stride: int
    fps: float

    @property
    def span(self) -> int:
        """Grid frames from a clip's first frame to its last, inclusive."""
        return (self.frames - 1) * self.stride + 1

    def frame_times(self, start: int) -> np.ndarray:
        """Times (s) of the T frames of the clip starting at grid index ``start``."""
        return (start + self.stride * np.arange(self.frames)) / self.fps


def grid_length(duration: float, fps: float) -> int:
    """Grid frames in ``duration`` seconds (at least 1 for a non-empty video)."""
    return max(1, math.floor(duration * fps + 1e-6))


def clip_starts(
    num_frames: int, clips: int, span: int, t_max_frames: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``clips`` start indices on a grid of ``num_frames`` frames.

    Args:
        num_frames: grid frames in the video.
        clips: how many starts (ρ).
        span: grid frames one clip covers.
        t_max_frames: the largest allowed distance between two starts, in grid frames
            (None: global sampling).
        rng: the item's random generator.

    Returns:
        int64 array [clips], sorted ascending. A video shorter than ``span`` gives all zeros
        (the decoder then repeats its last frame).
    """
    max_start = max(0, num_frames - span)
    if t_max_frames is None:
        starts = rng.integers(0, max_start + 1, size=clips)
    else:
        window = min(t_max_frames, max_start)
        window_start = rng.integers(0, max_start - window + 1)
        starts = window_start + rng.integers(0, window + 1, size=clips)
    return np.sort(starts).astype(np.int64)


GAP_TRIES = 100  # SlowFast's num_retries, for each clip and for the whole draw


def clip_gaps(starts: np.ndarray, span: int) -> np.ndarray:
    """Gaps (grid frames) from the last frame of each clip to the first of the next one in time.

    SlowFast's ``dt = t_start[1:] - t_end[:-1]`` over the time-sorted clips; negative when
    clips overlap. ``starts`` [..., ρ] gives [..., ρ − 1].
    """
    ordered = np.sort(starts, axis=-1)
    return ordered[..., 1:] - (ordered[..., :-1] + span - 1)


def gap_clip_starts(
    num_frames: int,
    clips: int,
    span: int,
    min_gap: int | None,
    max_gap: int | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``clips`` starts whose consecutive gaps (``clip_gaps``) lie in [min_gap, max_gap].

    SlowFast's sampler on our grid: the first start is uniform over the video; each next one
    is the first of up to ``GAP_TRIES`` uniform draws that keeps every gap in bounds (the last
    draw is kept if none does); the whole draw is repeated up to ``GAP_TRIES`` times until it
    meets the bounds, else the one that misses them by the fewest frames is returned (SlowFast
    ranks misses by a slightly different score; either only matters when the bounds cannot be
    met, e.g. a video too short for ``min_gap``).

    Args:
        num_frames, clips, span, rng: as ``clip_starts``.
        min_gap, max_gap: bounds in grid frames (None: unbounded on that side).

    Returns:
        int64 array [clips], sorted ascending.
    """
    low = -math.inf if min_gap is None else min_gap
    high = math.inf if max_gap is None else max_gap
    max_start = max(0, num_frames - span)
    best, best_miss = None, math.inf
    for _ in range(GAP_TRIES):
        starts = rng.integers(0, max_start + 1, size=1)
        for _ in range(clips - 1):
            candidates = rng.integers(0, max_start + 1, size=GAP_TRIES)
            trial = np.concatenate(
                [np.broadcast_to(starts, (GAP_TRIES, len(starts))), candidates[:, None]], 1
            )
            gaps = clip_gaps(trial, span)
            fits = np.flatnonzero(((gaps >= low) & (gaps <= high)).all(1))
            starts = trial[fits[0] if len(fits) else -1]
        gaps = clip_gaps(starts, span)
        miss = float(np.clip(low - gaps, 0, None).sum() + np.clip(gaps - high, 0, None).sum())
        if miss == 0:
            return np.sort(starts).astype(np.int64)
        if miss < best_miss:
            best, best_miss = starts, miss
    return np.sort(best).astype(np.int64)


def clip_order(clips: int, order: str, rng: np.random.Generator) -> np.ndarray:
    """The positions at which an item holds its time-sorted clips: ``time`` keeps them, ``shuffled``
    permutes them (one draw from ``rng``; none for a single clip, as SlowFast shuffles only ρ > 1)."""
    if order == "time" or clips < 2:
        return np.arange(clips)
    if order == "shuffled":
        return rng.permutation(clips)
    raise ValueError(f"clip order {order!r}: choose one of {', '.join(CLIP_ORDERS)}")
