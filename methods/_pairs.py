"""The multi-clip rule: with ρ clips of a video, every clip is a query against each of the others.

How a method's two-clip losses combine into its ρ-clip loss is ``loss_reduction``:

- ``"mean"`` (ours, the default): the mean of the two-clip loss over the clip pairs, the ρ(ρ−1)
  ordered pairs (query, target) for asymmetric losses (MoCo, BYOL, SwAV's swapped prediction),
  or the unordered pairs for symmetric ones (SimCLR's two-clip loss already counts both
  directions). The loss's scale does not depend on ρ.
- ``"slowfast"``: as facebookresearch/SlowFast back-propagates it (``contrastive_forward``,
  CONTRASTIVE.SEQUENTIAL): one loss per query clip, each the mean over the other clips, summed
  over the ρ query clips (MoCo, BYOL); SimCLR sums its two-clip loss over the pairs; SwAV (not
  sequential there) takes the mean, as ``"mean"`` does. The loss, and the gradient, grow with ρ:
  ρ times ``"mean"``'s for MoCo and BYOL, (number of pairs) times for SimCLR.
"""

from __future__ import annotations

from itertools import combinations

PAIR_MODES = ("all", "adjacent")
LOSS_REDUCTIONS = ("mean", "slowfast")


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


def query_weight(num_clips: int, reduction: str) -> float:
    """The weight of one (query, target) term of a per-query loss (MoCo, BYOL) over ρ clips.

    ``"mean"``: 1/(ρ(ρ−1)), the mean over ordered pairs; ``"slowfast"``: 1/(ρ−1), each query's
    mean over the other clips, summed over queries.
    """
    if reduction == "mean":
        return 1.0 / (num_clips * (num_clips - 1))
    if reduction == "slowfast":
        return 1.0 / (num_clips - 1)
    raise ValueError(f"loss_reduction={reduction!r}: choose one of {', '.join(map(repr, LOSS_REDUCTIONS))}")


def pair_weight(num_pairs: int, reduction: str) -> float:
    """The weight of one clip pair's term of a symmetric loss (SimCLR): 1/pairs (``"mean"``) or 1 (``"slowfast"``)."""
    if reduction == "mean":
        return 1.0 / num_pairs
    if reduction == "slowfast":
        return 1.0
    raise ValueError(f"loss_reduction={reduction!r}: choose one of {', '.join(map(repr, LOSS_REDUCTIONS))}")
