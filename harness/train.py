"""Pretraining: one ``Experiment`` → a trained encoder, checkpoints, an MLflow run, evaluations.

Read top to bottom: ``pretrain`` builds the data, the backbone and the method, resumes from
the last checkpoint when asked, runs the epochs (``_train_epoch``), writes a checkpoint after
each, and evaluates the encoder on the config's benchmarks at the end. One process, or one
rank of a torchrun job (rank 0 logs and writes).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import methods
from harness import backbones
from harness import distributed as dist_utils
from harness.atomic import atomic_file
from harness.checkpoint import LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from harness.config import ConfigError, Experiment
from harness.data import MultiClipDataset, read_manifest, train_transform
from harness.data.decode import CacheFull, FrameCache
from harness.data.epoch_order import EpochBatchSampler, EpochSampler
from harness.data.manifest import num_classes
from harness.optim import build_optimizer, lr_at, scaled_lr, set_lr
from harness.preflight import check_store, check_writable
from harness.progress import ProgressBar
from harness.redact import redact
from harness.runtime import Runtime, seed_everything
from harness.tracking import RunLogger, environment_tags, resolve_tracking_uri

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops rather than train on garbage."""


@dataclass
class PretrainResult:
    """What a finished pretraining hands back."""

    checkpoint: Path
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def build_method(experiment: Experiment) -> methods.SSLMethod:
    """Backbone + method as the config says."""
    backbone, feature_dim = backbones.build(experiment.backbone.name, **experiment.backbone.params)
    return methods.build(experiment.method.name, backbone, feature_dim, **experiment.method.params)


def train_dataset(experiment: Experiment, entries: list | None = None) -> MultiClipDataset:
    """The pretraining dataset the config describes: ρ clips per video, each augmented on its own."""
    data = experiment.data
    return MultiClipDataset(
        entries
        if entries is not None
        else read_manifest(data.train, allow_outside_root=data.allow_outside_root),
        data.clips,
        data.frames,
        data.stride,
        data.t_max,
        train_transform(data.crop, data.augment),
        seed=experiment.runtime.seed,
        fps=data.fps,
        seek_threshold=data.seek_threshold,
        cache=FrameCache() if data.cache else None,
    )


def with_num_classes(experiment: Experiment, entries: list) -> Experiment:
    """Fill ``method.num_classes`` from the manifest for methods that take it (supervised)."""
    if (
        "num_classes" not in methods.params_of(experiment.method.name)
        or "num_classes" in experiment.method.params
    ):
        return experiment
    filled = copy.deepcopy(experiment)
    filled.method.params["num_classes"] = num_classes(entries)
    return filled


def load_trained(path: str | Path) -> tuple[methods.SSLMethod, Experiment, dict[str, Any]]:
    """Rebuild the method of a checkpoint from the config stored in it, with its weights."""
    from harness.config import load_experiment_text

    state = load_checkpoint(path)
    experiment = load_experiment_text(state["config"], source=str(path))
    method = build_method(experiment)
    method.load_state_dict(state["method"])
    return method, experiment, state


def checkpoint_dir(experiment: Experiment, run_name: str | None = None) -> Path:
    """Where a run's checkpoints go: ``runtime.output_dir/<run name or training hash>``."""
    return Path(experiment.runtime.output_dir) / (run_name or experiment.training_hash())


def pretrain(
    experiment: Experiment,
    *,
    resume: bool = False,
    resume_run: bool = True,
    run_name: str | None = None,
    output: Path | None = None,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_run_start: Callable[[str], None] | None = None,
    print_progress: bool = True,
) -> PretrainResult:
    """Pretrain (and evaluate) one experiment.

    Args:
        experiment: a validated config.
        resume: continue from ``<output>/last.pt`` when it exists (refused if it was written
            by a different training config).
        resume_run: when resuming, continue the checkpoint's MLflow run (else start a new one,
            e.g. for a study's retried trial, which links the old run by a tag).
        run_name: MLflow run name and checkpoint folder name (default: the training hash).
        output: checkpoint folder (default ``checkpoint_dir(experiment, run_name)``).
        tracking_uri: MLflow store (default: config, then $MLFLOW_TRACKING_URI, then ./mlruns).
        parent_run_id: nest the MLflow run under this run (study trials).
        tags: extra MLflow tags.
        on_epoch_end: called with (epoch, metrics) after each epoch's checkpoint, on rank 0; it
            may raise to stop the run (Optuna pruning), and then every rank raises the same.
        on_run_start: called with the MLflow run id once the run exists (rank 0).
        print_progress: show a progress bar per epoch.

    Raises:
        NonFiniteLossError: the loss became NaN/inf.
    """
    runtime = Runtime.setup(experiment.runtime)
    seed_everything(experiment.runtime.seed)
    data = experiment.data
    entries = read_manifest(data.train, allow_outside_root=data.allow_outside_root)
    global_batch = data.batch_size
    if global_batch % runtime.world_size:
        raise ValueError(f"data.batch_size {global_batch} is not divisible by the {runtime.world_size} ranks")
    local_batch = global_batch // runtime.world_size
    if len(entries) // runtime.world_size < local_batch:
        raise ValueError(
            f"data.batch_size {global_batch} exceeds the {len(entries)} videos of {data.train}; lower data.batch_size"
        )

    experiment = with_num_classes(experiment, entries)
    output = Path(output) if output is not None else checkpoint_dir(experiment, run_name)
    if runtime.is_main:  # a read-only or full disk fails here, before any compute
        check_store(resolve_tracking_uri(tracking_uri, experiment.runtime.tracking_uri), "MLflow store")
        check_writable(output, "checkpoint folder (runtime.output_dir)")
    method = build_method(experiment)
    if experiment.backbone.sync_bn and runtime.distributed:
        if runtime.device.type != "cuda":
            raise ConfigError(
                "backbone.sync_bn", True, "false on CPU: torch's SyncBatchNorm runs on GPUs only"
            )
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method = runtime.prepare_model(method)
    dist_utils.broadcast_state(method)

    dataset = train_dataset(experiment, entries)
    sampler = EpochSampler(len(dataset), experiment.runtime.seed, True, runtime.rank, runtime.world_size)
    steps_per_epoch = len(sampler) // local_batch
    optim_cfg = experiment.optim
    total_steps = steps_per_epoch * optim_cfg.epochs
    warmup_steps = round(optim_cfg.warmup_epochs * steps_per_epoch)
    peak_lr = scaled_lr(optim_cfg, global_batch)
    optimizer = (
        build_optimizer(method.param_groups(optim_cfg.weight_decay), optim_cfg, peak_lr)
        if method.trainable
        else None
    )

    config_hash = experiment.training_hash()
    start_epoch, step, history, run_id = 0, 0, [], None
    if resume and (output / LAST).is_file():
        state = load_checkpoint(output / LAST, expected_hash=config_hash)
        method.load_state_dict(state["method"])
        if optimizer is not None and state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        run_id = state.get("run_id") if resume_run else None
        if runtime.is_main:
            print(f"resuming {output / LAST} after epoch {start_epoch} (step {step})", flush=True)
    elif resume and resume_run and runtime.is_main:
        run_id = _run_without_checkpoint(output, config_hash)  # killed before its first checkpoint

    tracker = None
    if runtime.is_main:
        tracker = _start_tracking(
            experiment, runtime, run_name, run_id, parent_run_id, tags, tracking_uri, output
        )
        if start_epoch:
            tracker.set_tags({"resumed_from_epoch": start_epoch})
        if run_id is None:  # a new run for a resumed training: carry the finished epochs over
            for record in history:
                tracker.log_metrics(
                    {f"epoch.{k}": v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"])
                )
        if not (output / LAST).is_file():  # once a checkpoint exists, it holds the run id
            _write_run_file(output, tracker.run_id, config_hash)
        if on_run_start is not None:
            on_run_start(tracker.run_id)
    try:
        if not method.trainable:
            start_epoch = optim_cfg.epochs  # nothing to train (random init): evaluate as built
        if dataset.cache is not None and start_epoch < optim_cfg.epochs:
            _fill_cache(dataset, data.train, runtime.is_main)
        # One loader iterator for all remaining epochs: its workers run ahead across epoch ends.
        # Its own generator keeps the global RNG untouched, so a resumed run stays bit-identical
        # (items are seeded by (seed, epoch, index); worker seeds do not matter).
        loader = DataLoader(
            dataset,
            batch_sampler=EpochBatchSampler(sampler, local_batch, start_epoch, optim_cfg.epochs),
            num_workers=data.workers if start_epoch < optim_cfg.epochs else 0,
            pin_memory=runtime.device.type == "cuda",
            prefetch_factor=4 if data.workers > 0 and start_epoch < optim_cfg.epochs else None,
            generator=torch.Generator().manual_seed(experiment.runtime.seed),
        )
        batches = iter(loader)
        for epoch in range(start_epoch, optim_cfg.epochs):
            method.on_epoch_start(epoch)
            label = f"epoch {epoch + 1}/{optim_cfg.epochs}"
            epoch_metrics, step = _train_epoch(
                method,
                itertools.islice(batches, steps_per_epoch),
                dataset,
                optimizer,
                runtime,
                experiment,
                step,
                total_steps,
                warmup_steps,
                peak_lr,
                tracker,
                ProgressBar(label, steps_per_epoch) if runtime.is_main and print_progress else None,
            )
            if experiment.eval.knn_monitor and data.val and runtime.is_main:
                epoch_metrics["knn_top1"] = _knn_monitor(method, experiment, runtime)
            history.append({"epoch": epoch + 1, **epoch_metrics})
            if runtime.is_main:
                save_checkpoint(
                    output / LAST, _state(method, optimizer, experiment, epoch + 1, step, history, tracker)
                )
                tracker.log_metrics({f"epoch.{k}": v for k, v in epoch_metrics.items()}, step=epoch + 1)
                tracker.flush()
            if on_epoch_end is not None:
                _on_main_then_all(on_epoch_end, runtime, epoch + 1, epoch_metrics)
        if runtime.is_main and (not (output / LAST).is_file() or not method.trainable):
            save_checkpoint(
                output / LAST, _state(method, optimizer, experiment, optim_cfg.epochs, step, history, tracker)
            )
        metrics = dict(history[-1]) if history else {}
        metrics.pop("epoch", None)
        if runtime.is_main:
            metrics.update(_evaluate_all(method, experiment, runtime, config_hash, tracker))
            _log_artifacts(tracker, experiment, method, history, output)
            tracker.finish("FINISHED")
        return PretrainResult(output / LAST, tracker.run_id if tracker else None, metrics, history)
    except BaseException as exc:
        if tracker is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                tracker.set_tags({"failure_reason": f"{exc.__class__.__name__}: {exc}"[:5000]})
                tracker.finish(status)
            except Exception as tracking_exc:  # keep the original error
                log.warning("could not close the MLflow run: %s", tracking_exc)
        raise


def _on_main_then_all(callback: Callable[[int, dict], None], runtime: Runtime, *args) -> None:
    """Call ``callback`` on rank 0; an exception it raises (``optuna.TrialPruned``, say) is raised on
    every rank, so that all ranks stop together instead of waiting for rank 0 in the next step."""
    error = None
    if runtime.is_main:
        try:
            callback(*args)
        except Exception as exc:
            error = exc
    shared = dist_utils.broadcast_object(_picklable(error))
    if error is not None:
        raise error
    if shared is not None:
        raise shared


def _picklable(error: Exception | None) -> Exception | None:
    """``error``, or a RuntimeError with its message when it cannot be sent to the other ranks."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{error.__class__.__name__}: {error}")


def _train_epoch(
    method,
    batches,
    dataset,
    optimizer,
    runtime,
    experiment,
    step,
    total_steps,
    warmup_steps,
    peak_lr,
    tracker,
    bar,
):
    """Train on one epoch's ``batches``; returns the epoch's mean metrics and the new global step."""
    method.train()
    sums: dict[str, float] = {}
    count = 0
    wait_time = compute_time = 0.0
    clips_seen = 0
    clip_grad = experiment.optim.clip_grad
    log_every = experiment.runtime.log_every
    tick = time.perf_counter()
    for batch in batches:
        loaded = time.perf_counter()
        wait_time += loaded - tick
        batch = runtime.to_device(batch)
        lr = lr_at(step, total_steps, warmup_steps, peak_lr, experiment.optim.min_lr_ratio)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            out = method.training_step(batch)
        if not out.backward_done:
            out.loss.backward()
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} at step {step} (lr {lr:.3g}); lower optim.lr or check the data"
            )
        dist_utils.average_gradients(method.parameters())
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
        optimizer.step()
        step += 1
        method.on_step_end(step / total_steps)
        tock = time.perf_counter()
        compute_time += tock - loaded
        clips_seen += batch["clips"].shape[0] * batch["clips"].shape[1] * runtime.world_size
        metrics = {**out.metrics, "loss": loss, "lr": lr}
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        elapsed = wait_time + compute_time
        speed = {"clips_per_s": clips_seen / elapsed, "data_wait": wait_time / elapsed}
        if tracker is not None and step % log_every == 0:
            tracker.log_metrics({**metrics, **speed}, step=step)
        if bar is not None:
            bar.update(
                count, {"loss": loss, "lr": lr, "clips/s": speed["clips_per_s"], "wait": speed["data_wait"]}
            )
        tick = time.perf_counter()
    epoch = {k: v / max(1, count) for k, v in sums.items()}
    elapsed = max(1e-9, wait_time + compute_time)
    epoch.update(
        {"clips_per_s": clips_seen / elapsed, "data_wait": wait_time / elapsed, "epoch_time": elapsed}
    )
    epoch.update(_padding_counts(dataset))
    return epoch, step


def _fill_cache(dataset: MultiClipDataset, manifest: str, verbose: bool) -> None:
    """``data.cache``: decode every training video into memory before the loader's workers fork."""
    started = time.perf_counter()
    try:
        dataset.preload()
    except CacheFull as exc:
        raise ConfigError(
            "data.cache", True, f"{exc}; the videos of {manifest} do not fit in memory: set data.cache: false"
        ) from None
    if verbose:
        print(
            f"data.cache: {len(dataset.cache)} videos decoded into memory "
            f"({dataset.cache.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s",
            flush=True,
        )


def _padding_counts(dataset: MultiClipDataset) -> dict[str, float]:
    """Bad files seen by this process (workers keep their own counts; see ``rho data check``)."""
    return {"bad_files": float(len(dataset.bad_files))} if dataset.bad_files else {}


def _state(
    method, optimizer, experiment: Experiment, epoch: int, step: int, history, tracker
) -> dict[str, Any]:
    return {
        "config_hash": experiment.training_hash(),
        "config": redact(experiment.to_yaml()),  # no URL password on disk (rebuilding the method needs none)
        "epoch": epoch,
        "step": step,
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "rng": rng_state(),
        "history": history,
        "run_id": tracker.run_id if tracker is not None else None,
    }


RUN_FILE = "run.json"  # the MLflow run of the training in this folder, written when the run starts


def _write_run_file(output: Path, run_id: str, config_hash: str) -> None:
    """Record the run in ``output/run.json`` (atomically), so that a training killed before its
    first checkpoint is resumed into the same MLflow run instead of leaving it RUNNING forever."""
    try:
        with atomic_file(output / RUN_FILE) as handle:
            handle.write(json.dumps({"run_id": run_id, "config_hash": config_hash}))
    except OSError as exc:  # a convenience only: the first checkpoint will hold the run id
        log.warning(
            "could not write %s (%s); a kill before the first checkpoint would start a new run",
            output / RUN_FILE,
            exc.strerror or exc,
        )


def _run_without_checkpoint(output: Path, config_hash: str) -> str | None:
    """The run id in ``output/run.json`` when it belongs to this config, else None."""
    try:
        record = json.loads((output / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("config_hash") != config_hash:
        return None
    print(f"resuming MLflow run {record['run_id']}: it stopped before its first checkpoint", flush=True)
    return record["run_id"]


def _start_tracking(
    experiment, runtime, run_name, run_id, parent_run_id, tags, tracking_uri, output
) -> RunLogger:
    uri = resolve_tracking_uri(tracking_uri, experiment.runtime.tracking_uri)
    data = experiment.data
    run_tags = {
        "method": experiment.method.name,
        "backbone": experiment.backbone.name,
        "rho": str(data.clips),
        "dataset": data.dataset,
        "config_hash": experiment.training_hash(),
        "world_size": str(runtime.world_size),
        "device": str(runtime.device),
        **environment_tags(),
        **(tags or {}),
    }
    tracker = RunLogger(
        uri,
        experiment.runtime.experiment,
        run_name=run_name,
        run_id=run_id,
        parent_run_id=parent_run_id,
        tags=run_tags,
    )
    if run_id is None:
        params = experiment.flat()
        fps = data.fps
        params["data.t_max_frames"] = (
            "global"
            if data.t_max is None
            else (f"{data.t_max}s x fps" if fps is None else round(data.t_max * fps))
        )
        params["checkpoint_dir"] = str(output)
        tracker.log_params(params)
        tracker.log_text(experiment.to_yaml(), "config.yaml")
    return tracker


def _subset(entries: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` of ``entries``: the same random subset, in manifest order, every epoch."""
    if limit is None or len(entries) <= limit:
        return entries
    chosen = np.random.default_rng([seed, limit]).choice(len(entries), limit, replace=False)
    return [entries[i] for i in sorted(chosen)]


def _knn_monitor(method, experiment: Experiment, runtime: Runtime) -> float:
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
            _subset(read_manifest(path, allow_outside_root=data.allow_outside_root), limit, seed), **views
        )
        for path in (data.train, data.val)
    )
    return knn_monitor(
        method.encoder, train, val, k=experiment.eval.knn_k, device=runtime.device, workers=data.workers
    )


def _evaluate_all(
    method, experiment: Experiment, runtime: Runtime, encoder_key: str, tracker
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


def _log_artifacts(tracker: RunLogger, experiment: Experiment, method, history, output: Path) -> None:
    """The training-curve PNG and, if asked, the encoder weights."""
    if history:
        from harness.report.plots import training_curves

        png = training_curves(
            history,
            output / "training_curves.png",
            title=f"{experiment.method.name} ρ={experiment.data.clips}",
        )
        tracker.log_artifact(png)
    if experiment.runtime.save_encoder:
        path = output / "encoder.pt"
        torch.save(method.encoder.state_dict(), path)
        tracker.log_artifact(path)
