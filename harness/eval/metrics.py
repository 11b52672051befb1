"""Scores of class predictions: top-k accuracy in percent, and softmax probabilities averaged over views."""

from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of rows of ``scores`` [N, C] whose label is among the k highest."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).double().mean().item()


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of class scores [N, C]; top-5 is top-min(5, C)."""
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5)}


def view_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-view logits [N, V, C] → class probabilities averaged over the views [N, C]."""
    return logits.float().softmax(dim=-1).mean(dim=1)


def class_count(*labels: torch.Tensor) -> int:
    """One more than the largest label of any of ``labels``."""
    return int(max(int(x.max()) for x in labels)) + 1
