"""Supervised training of the backbone: the upper bound the self-supervised methods are compared with."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from methods._memory import embed_clips
from methods.base import SSLMethod, StepOutput


class Supervised(SSLMethod):
    """Cross-entropy of a linear classifier on the pooled features of every clip.

    Args:
        backbone, feature_dim: see ``SSLMethod``.
        num_classes: number of labels; required (the engine fills it from the manifest).
    """

    uses_labels = True

    def __init__(self, backbone: nn.Module, feature_dim: int, *, num_classes: int | None = None) -> None:
        super().__init__(backbone, feature_dim)
        if num_classes is None or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: supervised needs the number of classes (>= 2)")
        self.classifier = nn.Linear(feature_dim, num_classes)

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips, labels = batch["clips"], batch["label"]
        logits = embed_clips(lambda clip: self.classifier(self.backbone(clip)), clips).flatten(0, 1)
        targets = labels.repeat_interleave(clips.shape[1])
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean().item()
        return StepOutput(loss, {"loss": loss.item(), "accuracy": accuracy})
