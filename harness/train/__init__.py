"""Pretraining: ``pretrain`` runs one experiment end to end; ``train_epoch`` is its loop of one epoch.

Modules: ``pretraining`` (``pretrain`` as its steps), ``prepare`` (the set-up), ``resume``
(checkpoint state, run.json), ``run_tracking`` (the MLflow run), ``loop`` (``train_epoch``),
``evaluation`` (kNN monitor, benchmarks), ``callbacks`` (rank 0's per-epoch callback on every
rank), ``factories`` (method, dataset, loader, optimizer from a config).
"""

from harness.train.evaluation import monitor_subset
from harness.train.factories import build_method, load_trained, train_dataset
from harness.train.loop import EpochContext, NonFiniteLossError, Schedule, train_epoch
from harness.train.prepare import checkpoint_dir
from harness.train.pretraining import EpochCallback, PretrainResult, pretrain

__all__ = [
    "EpochCallback",
    "EpochContext",
    "NonFiniteLossError",
    "PretrainResult",
    "Schedule",
    "build_method",
    "checkpoint_dir",
    "load_trained",
    "monitor_subset",
    "pretrain",
    "train_dataset",
    "train_epoch",
]
