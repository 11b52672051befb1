"""The kNN protocol: weighted k-nearest-neighbour classification of frozen, cached features.

Features are L2-normalised per view and averaged over views; the k nearest training videos by
cosine similarity vote with weight exp(s / τ) (InstDisc, SlowFast's kNN monitor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.eval.context import EvalContext
from harness.eval.features import cached_features
from harness.eval.metrics import accuracy, class_count
from harness.eval.spec import Benchmark, KnnSpec

KNN_QUERY_CHUNK = 256  # test videos per similarity matrix (256 × 240k Kinetics videos: 1 GB)


def video_embeddings(features: torch.Tensor) -> torch.Tensor:
    """Per-view features [N, V, D] → each view L2-normalised, then averaged over views [N, D]."""
    return F.normalize(features.float(), dim=-1).mean(dim=1)


def knn_scores(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted kNN class scores: each test row's k most cosine-similar training rows vote exp(s / τ).

    Args:
        train: [N, D] embeddings; test: [M, D] (both L2-normalised here).
        train_labels: [N] class indices.
        k: neighbours, capped at N.

    Returns:
        Scores [M, num_classes]: the summed weights of the neighbours of each class.
    """
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for queries in test.split(KNN_QUERY_CHUNK):
        similarity, neighbours = (queries @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes, device=test.device)
        scores.append(
            votes.scatter_add_(1, train_labels.to(test.device)[neighbours], (similarity / temperature).exp())
        )
    return torch.cat(scores)


def knn_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    settings: KnnSpec,
) -> dict[str, float]:
    """Weighted kNN classification of test videos [M, V', D] against training videos [N, V, D]."""
    train, test = video_embeddings(train_features), video_embeddings(test_features)
    classes = class_count(train_labels, test_labels)
    return accuracy(
        knn_scores(train, train_labels, test, classes, settings.k, settings.temperature), test_labels
    )


def run_knn(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> dict[str, float]:
    """The kNN protocol of ``benchmark`` on ``encoder``'s cached features: ``{"top1": %, "top5": %}``."""
    return knn_probe(*cached_features(encoder, benchmark, context), benchmark.settings)
