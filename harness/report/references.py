"""Published numbers to show beside a full-scale study's own, each labelled by its source.

Slow R-50 8×8 pretrained for 200 epochs on Kinetics-400, top-1 (%) of two downstream tasks:
Kinetics-400 linear classification (``k400-linear``) and UCF101 split 1 fine-tuning
(``ucf101-finetune``). Two sources, never mixed in one column of a report:

- ``paper``: the numbers of the paper as the issue quoted them (the paper itself is not in the
  project's reference material, so they are unchecked here);
- ``model zoo``: SlowFast's projects/contrastive_ssl/README.md, the "Kinetics 400 and 600" table
  (columns K400-linear and UCF101-split1; checked against it). SlowFast's MODEL_ZOO.md lists no
  contrastive_ssl models. Its BYOL ρ = 4 16×4 row (71.1 / 95.4) is another backbone and left out.

A run is comparable when it logged a metric of the task (``TASK_METRICS``) with that backbone
and number of epochs: K400 linear is SlowFast's protocol (``linear_slowfast``, the same as the
sources) or our cached-feature probe (``linear``, the fast default; the report names the metric).
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = (
    "Feichtenhofer, Fan, Xiong, Girshick, He: A Large-Scale Study on Unsupervised Spatiotemporal "
    "Representation Learning, CVPR 2021 (arXiv:2104.14558), as quoted in issue 16 (not checked here)"
)
MODEL_ZOO = (
    "facebookresearch/SlowFast, projects/contrastive_ssl/README.md (model zoo table "
    "'Kinetics 400 and 600': K400-linear, UCF101-split1)"
)
SOURCES = {"paper": PAPER, "model zoo": MODEL_ZOO}
"""Each source and its citation, in the order of the report's columns."""

TASK_METRICS = {
    "k400-linear": ("eval.k400.linear_slowfast.top1", "eval.k400.linear.top1"),
    "ucf101-finetune": ("eval.ucf101-split1.finetune.top1",),
}
"""The metrics (benchmarks/k400_linear_slowfast.yaml, k400_linear.yaml,
ucf101_split1_finetune.yaml) that measure each task."""


@dataclass(frozen=True)
class Reference:
    """One published figure: ``value`` on ``task`` for ``method`` at ρ = ``rho``, from ``source``."""

    method: str
    rho: int
    value: float
    source: str  # a key of SOURCES
    task: str = "k400-linear"
    backbone: str = "slow_r50"
    epochs: int = 200

    @property
    def citation(self) -> str:
        return SOURCES[self.source]


REFERENCES = (
    Reference("moco", 2, 65.8, "paper"),
    Reference("moco", 3, 67.3, "paper"),
    Reference("byol", 4, 68.9, "paper"),
    Reference("byol", 4, 93.8, "paper", task="ucf101-finetune"),
    Reference("simclr", 2, 60.5, "paper"),
    Reference("swav", 2, 61.6, "paper"),
    Reference("moco", 2, 66.6, "model zoo"),
    Reference("byol", 2, 67.4, "model zoo"),
    Reference("simclr", 2, 61.5, "model zoo"),
    Reference("swav", 2, 62.6, "model zoo"),
    Reference("moco", 4, 71.0, "model zoo"),
    Reference("byol", 4, 70.1, "model zoo"),
    Reference("moco", 2, 91.3, "model zoo", task="ucf101-finetune"),
    Reference("byol", 2, 94.0, "model zoo", task="ucf101-finetune"),
    Reference("simclr", 2, 88.3, "model zoo", task="ucf101-finetune"),
    Reference("swav", 2, 90.2, "model zoo", task="ucf101-finetune"),
    Reference("moco", 4, 94.5, "model zoo", task="ucf101-finetune"),
    Reference("byol", 4, 94.7, "model zoo", task="ucf101-finetune"),
)


def references_for(metric: str, backbone: str, epochs: int) -> list[Reference]:
    """The published figures comparable to runs of ``backbone`` trained ``epochs`` epochs, on ``metric``."""
    return [
        r
        for r in REFERENCES
        if metric in TASK_METRICS[r.task] and (r.backbone, r.epochs) == (backbone, epochs)
    ]
