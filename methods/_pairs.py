"""The multi-clip rule: with ρ clips of a video, every clip is a query against each of the others.

A method's ρ-clip loss is the mean of its two-clip loss over the clip pairs: the ρ(ρ−1)
ordered pairs (query, target) for asymmetric losses (MoCo, BYOL, SwAV's swapped prediction),
or the unordered pairs for symmetric ones (SimCLR's two-clip loss already counts both
directions).
"""

from __future__ import annotations

from itertools import combinations

PAIR_MODES = ("all", "adjacent")


def other_clips(query: int, num_clips: int) -> list[int]:
    """The clips that clip ``query`` is compared with: all but itself."""
    return [clip for clip in range(num_clips) if clip != query]


def ordered_pairs(num_clips: int) -> list[tuple[int, int]]:
    """All (query, target) pairs of distinct clips: ρ(ρ−1) of them."""
    return [(query, target) for query in range(num_clips) for target in other_clips(query, num_clips)]


def clip_pairs(num_clips: int, mode: str = "all") -> list[tuple[int, int]]:
    """Unordered clip pairs (a, b), a < b.

    Args:
        num_clips: ρ (V), at least 2.
        mode: ``"all"``: every pair, ρ(ρ−1)/2 of them; ``"adjacent"``: (k, k+1) only, in the
            item's clip order: neighbours in time with ``data.clip_order: time``, a random chain
            with ``shuffled`` (SlowFast shuffles its clips, ``temporally_rnd_clips``).
    """
    if mode == "all":
        return list(combinations(range(num_clips), 2))
    if mode == "adjacent":
        return [(clip, clip + 1) for clip in range(num_clips - 1)]
    raise ValueError(f"pairs={mode!r}: choose one of {', '.join(map(repr, PAIR_MODES))}")
