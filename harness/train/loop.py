"""The training loop of one epoch: lr schedule, forward under autocast, backward, NaN check,
gradient averaging and clipping, optimizer step, the method's step hook, metrics and speed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import distributed as dist_utils
from harness.config import OptimConfig
from harness.data import MultiClipDataset
from harness.optim import lr_at, scaled_lr, set_lr
from harness.progress import ProgressBar
from harness.runtime import Runtime
from harness.tracking import RunLogger
from harness.train.cost import RunCost
from methods import SSLMethod


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops rather than train on garbage."""


@dataclass(frozen=True)
class Schedule:
    """A run's step counts and learning rate: linear warm-up and cosine decay (``optim.schedule``).

    ``warmup_steps`` is whole steps for ``cosine_after_warmup`` (ours) and the exact
    ``warmup_epochs × steps_per_epoch`` for ``cosine_with_warmup``, which, like SlowFast's
    ``get_lr_at_epoch`` at epoch ``step / steps_per_epoch``, need not end on a step.
    """

    steps_per_epoch: int
    total_steps: int
    warmup_steps: float
    peak_lr: float
    min_lr_ratio: float = 0.0
    schedule: str = "cosine_after_warmup"
    warmup_start_lr: float = 0.0

    @classmethod
    def of(cls, optim: OptimConfig, steps_per_epoch: int, global_batch: int) -> Schedule:
        """The schedule of ``optim`` for ``steps_per_epoch`` steps of ``global_batch`` videos."""
        peak_lr = scaled_lr(optim, global_batch)
        warmup = optim.warmup_epochs * steps_per_epoch
        return cls(
            steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * optim.epochs,
            warmup_steps=warmup if optim.schedule == "cosine_with_warmup" else round(warmup),
            peak_lr=peak_lr,
            min_lr_ratio=optim.min_lr_ratio,
            schedule=optim.schedule,
            warmup_start_lr=optim.warmup_start_lr * peak_lr / optim.lr,
        )

    def lr(self, step: int) -> float:
        """The learning rate of global step ``step``."""
        return lr_at(
            step,
            self.total_steps,
            self.warmup_steps,
            self.peak_lr,
            self.min_lr_ratio,
            self.schedule,
            self.warmup_start_lr,
        )


@dataclass
class EpochContext:
    """What ``train_epoch`` needs besides the batches; one context serves all epochs of a run.

    Attributes:
        method: the method being trained (already on ``runtime.device``).
        optimizer: its optimizer; the loop sets the learning rate of every group each step.
        runtime: device, autocast and world size.
        schedule: the learning-rate schedule over the global step.
        log_every: log step metrics to ``tracker`` every this many global steps.
        clip_grad: clip the gradients' global norm to this, or None.
        tracker: the MLflow run (rank 0), or None.
        bar: this epoch's progress bar, or None.
        step: the global step (optimizer steps so far); ``train_epoch`` advances it.
        after_step: called with the epoch's progress after every step (the step boundary: a
            mid-epoch checkpoint, a stop); it may raise to end the epoch there.
        cost: the run's cost totals (clips, bytes decoded, the step's FLOPs counted on the first
            batch), or None.
    """

    method: SSLMethod
    optimizer: torch.optim.Optimizer
    runtime: Runtime
    schedule: Schedule
    log_every: int
    clip_grad: float | None = None
    tracker: RunLogger | None = None
    bar: ProgressBar | None = None
    step: int = 0
    after_step: Callable[[EpochProgress], None] | None = None
    cost: RunCost | None = None


@dataclass
class EpochProgress:
    """An epoch so far: its steps, the sums of its step metrics and its speed counters. A mid-epoch
    checkpoint holds it (``state``), so that a resumed epoch's mean metrics are those of an
    uninterrupted one (the same sums in the same order)."""

    batches: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    clips: int = 0
    wait_time: float = 0.0
    compute_time: float = 0.0

    def state(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "sums": dict(self.sums),
            "clips": self.clips,
            "wait_time": self.wait_time,
            "compute_time": self.compute_time,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        return cls(
            int(state["batches"]),
            {k: float(v) for k, v in state["sums"].items()},
            int(state["clips"]),
            float(state["wait_time"]),
            float(state["compute_time"]),
        )


def train_epoch(
    context: EpochContext, batches: Iterable[dict], progress: EpochProgress | None = None
) -> dict[str, float]:
    """Train on one epoch's ``batches``; returns the epoch's mean metrics and its speed.

    ``progress``: the part of the epoch trained before (a run resumed mid-epoch), carried on;
    ``batches`` are then the epoch's remaining ones.

    Raises:
        NonFiniteLossError: the loss became NaN/inf.
    """
    method, optimizer, runtime, schedule = (
        context.method,
        context.optimizer,
        context.runtime,
        context.schedule,
    )
    tracker, bar, clip_grad, log_every = context.tracker, context.bar, context.clip_grad, context.log_every
    method.train()
    progress = progress if progress is not None else EpochProgress()
    sums = progress.sums
    tick = time.perf_counter()
    for batch in batches:
        loaded = time.perf_counter()
        progress.wait_time += loaded - tick
        bytes_read = batch.get("bytes_read")
        batch = runtime.to_device(batch)
        cost = context.cost
        if cost is not None and cost.step_flops is None and not cost.tried_flops:
            cost.count_flops(method, batch, runtime.autocast)  # on a copy, outside the step's time
            loaded = time.perf_counter()
        step = context.step
        lr = schedule.lr(step)
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
        if method.updates_weights(step):
            optimizer.step()
        context.step = step = step + 1
        method.on_step_end(step / schedule.total_steps)
        tock = time.perf_counter()
        progress.compute_time += tock - loaded
        clips = batch["clips"].shape[0] * batch["clips"].shape[1] * runtime.world_size
        progress.clips += clips
        if cost is not None:
            cost.add_batch(clips, int(torch.as_tensor(bytes_read).sum()) if bytes_read is not None else 0)
        metrics = {**out.metrics, "loss": loss, "lr": lr}
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        progress.batches += 1
        elapsed = progress.wait_time + progress.compute_time
        speed = {"clips_per_s": progress.clips / elapsed, "data_wait": progress.wait_time / elapsed}
        if tracker is not None and step % log_every == 0:
            tracker.log_metrics({**metrics, **speed}, step=step)
        if bar is not None:
            bar.update(
                progress.batches,
                {"loss": loss, "lr": lr, "clips/s": speed["clips_per_s"], "wait": speed["data_wait"]},
            )
        if context.after_step is not None:
            context.after_step(progress)
        tick = time.perf_counter()
    epoch = {k: v / max(1, progress.batches) for k, v in sums.items()}
    elapsed = max(1e-9, progress.wait_time + progress.compute_time)
    epoch.update(
        {
            "clips_per_s": progress.clips / elapsed,
            "data_wait": progress.wait_time / elapsed,
            "epoch_time": elapsed,
        }
    )
    return epoch


def padding_counts(dataset: MultiClipDataset) -> dict[str, float]:
    """Distinct bad files found so far (all of them up front with ``data.cache``), 0 included so
    that the metric is logged every epoch in every mode."""
    return {"bad_files": float(len(dataset.bad_files))}
