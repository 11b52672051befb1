"""What a training checkpoint holds, and where a resumed training starts: after its last
checkpoint (at an epoch end, or at the step within an epoch where a mid-epoch one was written),
or in the MLflow run that ``run.json`` names when it was killed before the first one."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.atomic import atomic_file
from harness.checkpoint import LAST, load_checkpoint, rng_state, set_rng_state
from harness.redact import redact
from harness.tracking import RunLogger
from harness.train.prepare import Training

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # the MLflow run of the training in this folder, written when the run starts


@dataclass
class ResumePoint:
    """Where a training starts: after ``epoch`` epochs and ``step`` steps, in run ``run_id`` (None: a
    new run); ``in_epoch``, when the checkpoint was written within epoch ``epoch + 1``: how far
    that epoch had got (``EpochProgress.state``)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # the finished epochs' metrics
    run_id: str | None = None
    in_epoch: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None  # the cost totals so far (``RunCost.state``)


def resume_point(training: Training, *, resume_run: bool) -> ResumePoint:
    """Restore ``output/last.pt`` into the method, the optimizer and the RNGs when it exists (refused
    if another training config wrote it); without one, continue the run of ``run.json`` if it
    belongs to this config. ``resume_run=False`` starts a new MLflow run either way.
    """
    output, config_hash, optimizer = training.output, training.config_hash, training.optimizer
    is_main = training.runtime.is_main
    if not (output / LAST).is_file():
        run_id = _run_without_checkpoint(output, config_hash) if resume_run and is_main else None
        return ResumePoint(run_id=run_id)
    state = load_checkpoint(output / LAST, expected_hash=config_hash)
    training.method.load_state_dict(state["method"])
    if optimizer is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    in_epoch = state.get("in_epoch")
    if in_epoch:
        training.dataset.bad_files.update(Path(p) for p in in_epoch.get("bad_files", []))
    if is_main:
        where = f"after epoch {state['epoch']} (step {state['step']})"
        if in_epoch:
            steps = training.schedule.steps_per_epoch
            where = (
                f"in epoch {state['epoch'] + 1} after step {in_epoch['batches']} of {steps} "
                f"(step {state['step']}), without reading the videos it already trained on"
            )
        print(f"resuming {output / LAST} {where}", flush=True)
    return ResumePoint(
        state["epoch"],
        state["step"],
        list(state["history"]),
        state.get("run_id") if resume_run else None,
        in_epoch or None,
        state.get("cost"),
    )


def training_state(
    training: Training,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
    tracker: RunLogger | None,
    in_epoch: dict[str, Any] | None = None,
    cost: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a training after ``epoch`` epochs (and, with ``in_epoch``, part of the
    next one): weights, optimizer, RNGs, history, run id and, with ``cost``, the cost totals so far
    (``RunCost.state``: a resumed run carries them on)."""
    experiment, optimizer = training.experiment, training.optimizer
    if in_epoch is not None:
        in_epoch = {**in_epoch, "bad_files": sorted(str(p) for p in training.dataset.bad_files)}
    return {
        "config_hash": experiment.training_hash(),
        "config": redact(experiment.to_yaml()),  # no URL password on disk (rebuilding the method needs none)
        "epoch": epoch,
        "step": step,
        "method": training.method.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "rng": rng_state(),
        "history": history,
        "run_id": tracker.run_id if tracker is not None else None,
        **({"in_epoch": in_epoch} if in_epoch is not None else {}),
        **({"cost": cost} if cost is not None else {}),
    }


def remember_run(training: Training, run_id: str) -> None:
    """Until a checkpoint holds the run id, record the run in ``output/run.json`` (atomically), so that
    a training killed before its first checkpoint is resumed into the same MLflow run instead of
    leaving it RUNNING forever."""
    output = training.output
    if (output / LAST).is_file():
        return
    try:
        with atomic_file(output / RUN_FILE) as handle:
            handle.write(json.dumps({"run_id": run_id, "config_hash": training.config_hash}))
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
