"""Where the ρ clips of one video start.

Clips live on a time grid of ``fps`` frames per second (the video's own rate, or a target
rate). A clip of T frames at stride τ covers grid indices ``s, s+τ, …, s+(T−1)τ``, a span of
``(T−1)τ + 1`` grid frames. Starts are drawn uniformly:

- global sampling (``t_max=None``): each start independently over the whole video;
- with ``t_max`` (seconds): a window of ``t_max`` seconds is placed uniformly in the video and
  every start is drawn uniformly inside it, so no two starts lie more than ``t_max`` apart;
  ``t_max=0`` gives one start for every clip.

Starts come back sorted in time (earliest clip first): the clips of an item are in temporal
order, which is what "adjacent pairs" in the methods refer to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
