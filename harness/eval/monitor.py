"""The kNN monitor of pretraining: kNN top-1 of the current encoder between training epochs."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from harness.data.views import ViewDataset
from harness.eval.features import extract_features
from harness.eval.knn import knn_scores, video_embeddings
from harness.eval.metrics import class_count, topk_accuracy
from harness.runtime import Device

log = logging.getLogger(__name__)

_warned: set[Path] = set()  # unreadable videos the monitor has warned about in this process


def knn_monitor(
    encoder: nn.Module,
    train_dataset: ViewDataset,
    val_dataset: ViewDataset,
    k: int = 200,
    device: Device = "cpu",
    workers: int = 0,
    batch_size: int = 32,
    temperature: float = 0.07,
) -> float:
    """kNN top-1 (%) of ``val_dataset`` against ``train_dataset``, for monitoring pretraining.

    No cache (the encoder changes every epoch); the encoder's train/eval mode is restored, so
    it can run between training epochs. Use single centre views for speed. Unreadable videos are
    left out, with one warning per file the first time the monitor meets it.
    """
    train, train_labels = extract_features(
        encoder, train_dataset, batch_size, workers, device, progress=False
    )
    val, val_labels = extract_features(encoder, val_dataset, batch_size, workers, device, progress=False)
    _warn_unreadable({**train_dataset.bad_files, **val_dataset.bad_files})
    scores = knn_scores(
        video_embeddings(train),
        train_labels,
        video_embeddings(val),
        class_count(train_labels, val_labels),
        k,
        temperature,
    )
    return topk_accuracy(scores, val_labels, 1)


def _warn_unreadable(bad_files: dict[Path, str]) -> None:
    """Warn about each unreadable video not warned about before (the monitor runs every epoch)."""
    for path, why in bad_files.items():
        if path not in _warned:
            _warned.add(path)
            log.warning(
                "kNN monitor: skipping unreadable video (%s); `rho data check` lists all such files", why
            )
