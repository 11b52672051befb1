"""Published numbers to show beside a full-scale study's own, each with its source.

Kinetics-400 linear top-1 (%) of Slow R-50 8×8 pretrained for 200 epochs on Kinetics-400.
A run is comparable when it logged ``eval.k400.linear.top1`` with that backbone and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = (
    "Feichtenhofer, Fan, Xiong, Girshick, He: A Large-Scale Study on Unsupervised Spatiotemporal "
    "Representation Learning, CVPR 2021 (arXiv:2104.14558)"
)
MODEL_ZOO = "facebookresearch/SlowFast, projects/contrastive_ssl/README.md (model zoo, Kinetics-400 table: K400-linear)"


@dataclass(frozen=True)
class Reference:
    """One published figure: ``value`` of ``metric`` for ``method`` at ρ = ``rho``."""

    method: str
    rho: int
    value: float
    source: str  # "paper" or "model zoo"
    citation: str
    metric: str = "eval.k400.linear.top1"
    backbone: str = "slow_r50"
    epochs: int = 200


REFERENCES = (
    Reference("moco", 2, 65.8, "paper", PAPER),
    Reference("byol", 4, 68.9, "paper", PAPER),
    Reference("simclr", 2, 60.5, "paper", PAPER),
    Reference("swav", 2, 61.6, "paper", PAPER),
    Reference("moco", 2, 66.6, "model zoo", MODEL_ZOO),
    Reference("byol", 2, 67.4, "model zoo", MODEL_ZOO),
    Reference("simclr", 2, 61.5, "model zoo", MODEL_ZOO),
    Reference("swav", 2, 62.6, "model zoo", MODEL_ZOO),
    Reference("moco", 4, 71.0, "model zoo", MODEL_ZOO),
    Reference("byol", 4, 70.1, "model zoo", MODEL_ZOO),
)


def references_for(metric: str, backbone: str, epochs: int) -> list[Reference]:
    """The published figures comparable to runs of ``backbone`` trained ``epochs`` epochs, on ``metric``."""
    return [r for r in REFERENCES if (r.metric, r.backbone, r.epochs) == (metric, backbone, epochs)]
