"""Evaluation inside a training: the per-epoch kNN monitor (``eval.knn_monitor``) and the
config's benchmarks (``eval.benchmarks``) on the final encoder."""

from __future__ import annotations

import numpy as np

from harness.data import read_manifest
from harness.data.decode import decoder
from harness.tracking import RunLogger
from harness.train.prepare import Training


def monitor_subset(entries: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` of ``entries``: the same random subset, in manifest order, every epoch."""
    if limit is None or len(entries) <= limit:
        return entries
    chosen = np.random.default_rng([seed, limit]).choice(len(entries), limit, replace=False)
    return [entries[i] for i in sorted(chosen)]


def knn_monitor_top1(training: Training) -> float:
    """kNN top-1 of the current encoder on data.val against data.train (centre views)."""
    from harness.data.views import ViewDataset
    from harness.eval import knn_monitor

    experiment = training.experiment
    data = experiment.data
    views = dict(
        frames=data.frames,
        stride=data.stride,
        crop=data.crop,
        short_side=data.short_side,
        fps=data.fps,
        autorotate=data.autorotate,
        decoder=decoder(data.decoder),
    )
    limit, seed = experiment.eval.knn_monitor_videos, experiment.runtime.seed
    train, val = (
        ViewDataset(
            monitor_subset(read_manifest(path, allow_outside_root=data.allow_outside_root), limit, seed),
            **views,
        )
        for path in (data.train, data.val)
    )
    return knn_monitor(
        training.method.encoder,
        train,
        val,
        k=experiment.eval.knn_k,
        device=training.runtime.device,
        workers=data.workers,
    )


def evaluate_benchmarks(training: Training, tracker: RunLogger) -> dict[str, float]:
    """Every benchmark of ``eval.benchmarks`` on the final encoder; metrics logged as eval.<benchmark>.<protocol>.*

    Feature caches are keyed by the training hash (``encoder_key``): the same config, the same encoder.
    """
    experiment = training.experiment
    if not experiment.eval.benchmarks:
        return {}
    from harness.eval import evaluate, load_benchmark

    results: dict[str, float] = {}
    for path in experiment.eval.benchmarks:
        benchmark = load_benchmark(path)
        print(f"evaluating {benchmark.name} ({benchmark.protocol})", flush=True)
        metrics = evaluate(
            training.method.encoder,
            benchmark,
            encoder_key=training.config_hash,
            device=training.runtime.device,
            workers=experiment.data.workers,
            seed=experiment.runtime.seed,
            decoder=experiment.data.decoder,
        )
        results.update(metrics)
        tracker.log_metrics(metrics, step=experiment.optim.epochs)
    tracker.flush()
    return results
