"""Nearest class centroid, an example evaluation protocol plugin, on frozen, cached features.

Each video's embedding is its views' features (each L2-normalised when ``normalize``)
averaged; a class's centroid is the mean embedding of its training videos; a test video is
scored by its cosine similarity (``metric: cosine``) or negative Euclidean distance
(``metric: euclidean``) to each centroid. A benchmark file names it ``protocol: centroid`` and
may set its section::

    centroid:
      metric: cosine     # [cosine] or euclidean
      normalize: true    # [true] L2-normalise each view's features before averaging
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.eval import Benchmark, EvalContext, Protocol, accuracy, cached_features
from harness.schema import field_spec

METRICS = ("cosine", "euclidean")


@dataclass
class CentroidSpec:
    """The benchmark file's ``centroid:`` section, validated like the built-in protocols' sections."""

    metric: str = field_spec("cosine", help="similarity to the centroids", choices=METRICS)
    normalize: bool = field_spec(True, help="L2-normalise each view's features before averaging the views")


def centroid_scores(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, metric: str = "cosine"
) -> torch.Tensor:
    """Class scores [M, C] of test embeddings [M, D] against the class centroids of train [N, D]."""
    classes = int(max(train_labels.max(), 0)) + 1
    sums = torch.zeros(classes, train.shape[1]).index_add_(0, train_labels, train)
    counts = torch.bincount(train_labels, minlength=classes).clamp(min=1).unsqueeze(1)
    centroids = sums / counts
    if metric == "cosine":
        return F.normalize(test, dim=1) @ F.normalize(centroids, dim=1).T
    return -torch.cdist(test, centroids)


def run_centroid(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> dict[str, float]:
    """The protocol's runner: ``{"top1": %, "top5": %}`` on ``benchmark``'s test videos."""
    train, train_labels, test, test_labels = cached_features(encoder, benchmark, context)  # [N, V, D] ...
    settings: CentroidSpec = benchmark.settings

    def embed(features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        return (F.normalize(features, dim=-1) if settings.normalize else features).mean(dim=1)

    scores = centroid_scores(embed(train), train_labels, embed(test), settings.metric)
    return accuracy(scores, test_labels)


PROTOCOL = Protocol(settings=CentroidSpec, run=run_centroid)
