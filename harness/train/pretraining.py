"""``pretrain``: one ``Experiment`` → a trained encoder, checkpoints, an MLflow run, evaluations.

``pretrain`` reads as its steps: set up, resume, open the MLflow run (with run.json and the
history replay), train the epochs (a checkpoint after each), the final checkpoint, evaluation,
artifacts. One process, or one rank of a torchrun job (rank 0 logs and writes).

Between two steps (``_StepBoundary``): a stop signal (``runtime.stop_signals``) received by any
rank stops every rank there, after a mid-epoch checkpoint, with ``Preempted``; rank 0 also writes
a mid-epoch checkpoint every ``runtime.checkpoint_every`` steps or ``runtime.checkpoint_seconds``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import distributed as dist_utils
from harness.checkpoint import LAST, save_checkpoint
from harness.config import Experiment
from harness.progress import ProgressBar
from harness.runtime import Preempted, Runtime, signal_name, stop_requested, stop_signals
from harness.tracking import RunLogger
from harness.train.callbacks import on_main_then_all
from harness.train.cost import RunCost
from harness.train.evaluation import evaluate_benchmarks, knn_monitor_top1
from harness.train.factories import fill_cache, train_loader
from harness.train.loop import EpochContext, EpochProgress, padding_counts, train_epoch
from harness.train.prepare import Training, prepare_training
from harness.train.resume import ResumePoint, remember_run, resume_point, training_state
from harness.train.run_tracking import close_failed_run, log_artifacts, open_run, replay_history
from harness.train.slowfast_batch import slowfast_batch_note

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class PretrainResult:
    """What a finished pretraining hands back."""

    checkpoint: Path
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)  # the run's ``cost.*`` metrics (harness.train.cost)


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
        run_name: MLflow run name (default ``default_run_name``: method, ρ, backbone, hash, seed) and
            checkpoint folder name (default: the training hash).
        output: checkpoint folder (default ``checkpoint_dir(experiment, run_name)``).
        tracking_uri: MLflow store (default: config, then $MLFLOW_TRACKING_URI, then ./mlruns).
        parent_run_id: nest the MLflow run under this run (study trials).
        tags: extra MLflow tags.
        on_epoch_end: called with (epoch, metrics) after each epoch's checkpoint, on rank 0, the
            metrics with the run's ``cost.*`` totals so far; it may raise to stop the run (Optuna
            pruning), and then every rank raises the same.
        on_run_start: called with the MLflow run id once the run exists (rank 0).
        print_progress: show a progress bar per epoch.

    Raises:
        NonFiniteLossError: the loss became NaN/inf.
        Preempted: a stop signal arrived (``runtime.stop_signals``): every rank stopped at the same
            step boundary and rank 0 wrote a checkpoint there (or, after the last epoch, before the
            evaluation); the MLflow run is KILLED with a ``preempted`` tag until resumed.
    """
    runtime = Runtime.setup(experiment.runtime)
    try:
        with stop_signals(experiment.runtime.stop_signals):
            return _pretrain(
                experiment,
                runtime,
                resume=resume,
                resume_run=resume_run,
                run_name=run_name,
                output=output,
                tracking_uri=tracking_uri,
                parent_run_id=parent_run_id,
                tags=tags,
                on_epoch_end=on_epoch_end,
                on_run_start=on_run_start,
                print_progress=print_progress,
            )
    finally:
        runtime.teardown()


def _pretrain(
    experiment: Experiment,
    runtime: Runtime,
    *,
    resume: bool,
    resume_run: bool,
    run_name: str | None,
    output: Path | None,
    tracking_uri: str | None,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    on_epoch_end: EpochCallback | None,
    on_run_start: Callable[[str], None] | None,
    print_progress: bool,
) -> PretrainResult:
    """``pretrain`` once the runtime is set up and the stop signals are caught."""
    training = prepare_training(experiment, runtime, output, run_name, tracking_uri)
    _note_slowfast_batch(training)
    start = resume_point(training, resume_run=resume_run) if resume else ResumePoint()
    tracker = None
    if runtime.is_main:
        tracker = open_run(training, start, run_name, parent_run_id, tags, tracking_uri)
        if start.run_id is None:  # a new run for a resumed training: carry the finished epochs over
            replay_history(tracker, start.history)
        remember_run(training, tracker.run_id)
        if on_run_start is not None:
            on_run_start(tracker.run_id)
    cost = RunCost(runtime.world_size, start.cost)
    try:
        history, step = _train_epochs(training, start, tracker, on_epoch_end, print_progress, cost)
        metrics = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
        if runtime.is_main:
            _final_checkpoint(training, history, step, tracker, cost)
            signum = stop_requested()
            if signum and experiment.eval.benchmarks:
                raise Preempted(
                    f"stopped by {signal_name(signum)} after training, before the evaluation; "
                    f"checkpoint {training.output / LAST}: --resume evaluates it",
                    signum,
                )
            began = time.perf_counter()
            metrics.update(evaluate_benchmarks(training, tracker))
            cost.eval_seconds = time.perf_counter() - began
            tracker.log_metrics(cost.metrics(step), step=experiment.optim.epochs)
            log_artifacts(tracker, training, history)
            tracker.finish("FINISHED")
        return PretrainResult(
            training.output / LAST, tracker.run_id if tracker else None, metrics, history, cost.metrics(step)
        )
    except BaseException as exc:
        close_failed_run(tracker, exc)
        raise


def _note_slowfast_batch(training: Training) -> None:
    """Rank 0 says, in one line, where the per-rank batch makes this run differ from SlowFast's
    (BatchNorm group, ρMoCo's queue span): a warning on GPUs (the full-scale path), info on CPU."""
    runtime = training.runtime
    note = slowfast_batch_note(
        training.experiment, runtime.world_size, training.local_batch, training.schedule.steps_per_epoch
    )
    if note and runtime.is_main:
        log.log(logging.WARNING if runtime.device.type == "cuda" else logging.INFO, "%s", note)


def _train_epochs(
    training: Training,
    start: ResumePoint,
    tracker: RunLogger | None,
    on_epoch_end: EpochCallback | None,
    print_progress: bool,
    cost: RunCost,
) -> tuple[list[dict[str, float]], int]:
    """Train the remaining epochs; after each, the kNN monitor, a checkpoint, the epoch's metrics
    (and the ``cost.*`` totals) and ``on_epoch_end``. Returns the history of all epochs and the
    final global step; ``cost`` holds the run's totals after it."""
    experiment, method = training.experiment, training.method
    epochs, history = experiment.optim.epochs, list(start.history)
    first = start.epoch if method.trainable else epochs  # nothing to train (random init): evaluate as built
    if first >= epochs:
        return history, start.step
    cost.start()
    try:
        return _train_remaining(training, start, tracker, on_epoch_end, print_progress, cost, first)
    finally:
        cost.stop()


def _train_remaining(
    training: Training,
    start: ResumePoint,
    tracker: RunLogger | None,
    on_epoch_end: EpochCallback | None,
    print_progress: bool,
    cost: RunCost,
    first: int,
) -> tuple[list[dict[str, float]], int]:
    """``_train_epochs`` from epoch ``first`` on, its clock running."""
    experiment, runtime, method = training.experiment, training.runtime, training.method
    epochs, history = experiment.optim.epochs, list(start.history)
    resumed = EpochProgress.from_state(start.in_epoch) if start.in_epoch else None
    if resumed is not None:  # the loader skips the batches done, without reading their videos
        training.sampler.resume_at(first, resumed.batches * training.local_batch)
    if training.dataset.cache is not None:
        fill_cache(training.dataset, experiment.data.train, runtime.is_main)
    batches = map(  # the workers' skipped videos, warned once each and counted here
        training.dataset.note_skips,
        train_loader(
            training.dataset,
            training.sampler,
            training.local_batch,
            first,
            epochs,
            workers=experiment.data.workers,
            pin_memory=runtime.device.type == "cuda",
            seed=experiment.runtime.seed,
        ),
    )
    if training.augment is not None:  # data.augment.placement: device; the loop counts it as data wait
        batches = map(training.augment, batches)
    steps_per_epoch = training.schedule.steps_per_epoch
    context = EpochContext(
        method,
        training.optimizer,
        runtime,
        training.schedule,
        log_every=experiment.runtime.log_every,
        clip_grad=experiment.optim.clip_grad,
        tracker=tracker,
        step=start.step,
        cost=cost,
    )
    boundary = _StepBoundary(training, context, tracker, history)
    for epoch in range(first, epochs):
        method.on_epoch_start(epoch)
        progress = resumed if epoch == first and resumed is not None else EpochProgress()
        boundary(epoch, progress, periodic=False)  # the boundary before this process's next step
        context.after_step = functools.partial(boundary, epoch)
        show = runtime.is_main and print_progress
        context.bar = ProgressBar(f"epoch {epoch + 1}/{epochs}", steps_per_epoch) if show else None
        remaining = itertools.islice(batches, steps_per_epoch - progress.batches)
        metrics = train_epoch(context, remaining, progress)
        metrics.update(padding_counts(training.dataset))
        if experiment.eval.knn_monitor and experiment.data.val and runtime.is_main:
            metrics["knn_top1"] = knn_monitor_top1(training)
        history.append({"epoch": epoch + 1, **metrics})
        if runtime.is_main:
            state = training_state(training, epoch + 1, context.step, history, tracker, cost=cost.state())
            save_checkpoint(training.output / LAST, state)
            boundary.saved()
            tracker.log_metrics({f"epoch.{k}": v for k, v in metrics.items()}, step=epoch + 1)
            tracker.log_metrics(cost.metrics(context.step), step=epoch + 1)
            tracker.flush()
        if on_epoch_end is not None:
            on_main_then_all(on_epoch_end, runtime, epoch + 1, {**metrics, **cost.metrics(context.step)})
    return history, context.step


class _StepBoundary:
    """What happens between two steps of epoch ``epoch`` (called with the epoch's progress).

    A stop signal: the ranks agree on it (the largest signal number over ranks, one all-reduce of
    one number per boundary, only when distributed), so that all stop at the same step; rank 0
    writes a mid-epoch checkpoint there, then every rank raises ``Preempted``. Otherwise rank 0
    writes a mid-epoch checkpoint when ``runtime.checkpoint_every`` steps (of the global step) or
    ``runtime.checkpoint_seconds`` since the last checkpoint say so. The boundary after an epoch's
    last step is left to the epoch end (its checkpoint) and the next epoch's first boundary.
    """

    def __init__(
        self,
        training: Training,
        context: EpochContext,
        tracker: RunLogger | None,
        history: list[dict[str, float]],
    ):
        self.training, self.context, self.tracker, self.history = training, context, tracker, history
        self.every = training.experiment.runtime.checkpoint_every
        self.seconds = training.experiment.runtime.checkpoint_seconds
        self.last_saved = time.monotonic()

    def saved(self) -> None:
        """A checkpoint was just written (the periodic clock starts again)."""
        self.last_saved = time.monotonic()

    def __call__(self, epoch: int, progress: EpochProgress, periodic: bool = True) -> None:
        training, runtime, steps = (
            self.training,
            self.training.runtime,
            self.training.schedule.steps_per_epoch,
        )
        if progress.batches >= steps:
            return
        signum = dist_utils.max_over_ranks(stop_requested(), runtime.device)
        if signum:
            on_main_then_all(self._save, runtime, epoch, progress)
            raise Preempted(
                f"stopped by {signal_name(signum)} at step {self.context.step} (epoch {epoch + 1}, after "
                f"{progress.batches} of its {steps} steps); checkpoint {training.output / LAST}: "
                "--resume continues there (a study: run it again)",
                signum,
            )
        if not (periodic and runtime.is_main and progress.batches):
            return
        step = self.context.step
        due = self.every is not None and step % self.every == 0
        due = due or (self.seconds is not None and time.monotonic() - self.last_saved >= self.seconds)
        if due:
            self._save(epoch, progress)

    def _save(self, epoch: int, progress: EpochProgress) -> None:
        in_epoch = progress.state() if progress.batches else None
        cost = self.context.cost.state() if self.context.cost is not None else None
        state = training_state(
            self.training, epoch, self.context.step, self.history, self.tracker, in_epoch, cost
        )
        save_checkpoint(self.training.output / LAST, state)
        if self.tracker is not None:
            self.tracker.flush()  # the step metrics up to the checkpoint
        self.saved()


def _final_checkpoint(
    training: Training, history: list[dict[str, float]], step: int, tracker: RunLogger, cost: RunCost
) -> None:
    """A checkpoint for a run that wrote none (no epoch left to train) or trains nothing (random init)."""
    if (training.output / LAST).is_file() and training.method.trainable:
        return
    epochs = training.experiment.optim.epochs
    state = training_state(training, epochs, step, history, tracker, cost=cost.state())
    save_checkpoint(training.output / LAST, state)
