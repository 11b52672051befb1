"""Evaluation inside a training: the per-epoch kNN monitor (``eval.knn_monitor``) and the
config's benchmarks (``eval.benchmarks``) on the final encoder."""

from __future__ import annotations

import numpy as np

from harness.config import Experiment
from harness.data import read_manifest
from harness.runtime import Runtime
from harness.tracking import RunLogger
from methods import SSLMethod


def monitor_subset(entries: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` of ``entries``: the same random subset, in manifest order, every epoch."""
    if limit is None or len(entries) <= limit:
        return entries
    chosen = np.random.default_rng([seed, limit]).choice(len(entries), limit, replace=False)
    return [entries[i] for i in sorted(chosen)]


def knn_monitor_top1(method: SSLMethod, experiment: Experiment, runtime: Runtime) -> float:
    """kNN top-1 of the current encoder on data.val against data.train (centre views)."""
    from harness.data.views import ViewDataset
    from harness.eval import knn_monitor

    data = experiment.data
    views = dict(
        frames=data.frames, stride=data.stride, crop=data.crop, short_side=data.short_side, fps=data.fps
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
        method.encoder, train, val, k=experiment.eval.knn_k, device=runtime.device, workers=data.workers
    )


def evaluate_benchmarks(
    method: SSLMethod, experiment: Experiment, runtime: Runtime, encoder_key: str, tracker: RunLogger
) -> dict[str, float]:
    """Every benchmark of ``eval.benchmarks`` on the final encoder; metrics logged as eval.<benchmark>.<protocol>.*"""
    if not experiment.eval.benchmarks:
        return {}
    from harness.eval import evaluate, load_benchmark

    results: dict[str, float] = {}
    for path in experiment.eval.benchmarks:
        benchmark = load_benchmark(path)
        print(f"evaluating {benchmark.name} ({benchmark.protocol})", flush=True)
        metrics = evaluate(
            method.encoder,
            benchmark,
            encoder_key=encoder_key,
            device=runtime.device,
            workers=experiment.data.workers,
            seed=experiment.runtime.seed,
        )
        results.update(metrics)
        tracker.log_metrics(metrics, step=experiment.optim.epochs)
    tracker.flush()
    return results
