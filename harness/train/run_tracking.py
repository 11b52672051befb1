"""The MLflow run of a training (rank 0): opened with its tags and params or continued, the
finished epochs replayed into a new run, the artifacts at the end, the reason when it fails."""

from __future__ import annotations

import logging

import torch

from harness.config import Experiment
from harness.runtime import Preempted
from harness.tracking import RunLogger, environment_tags, resolve_tracking_uri
from harness.train.prepare import Training
from harness.train.resume import ResumePoint

log = logging.getLogger(__name__)


def default_run_name(experiment: Experiment) -> str:
    """The MLflow run name when none is given, e.g. ``simclr rho2 r3d_tiny 1a2b3c4d s0``: method, ρ,
    backbone, the training hash's start and the seed, so that runs differ in the UI (MLflow's own
    random names repeat, as seeding Python's RNG for the run fixes them)."""
    return (
        f"{experiment.method.name} rho{experiment.data.clips} {experiment.backbone.name} "
        f"{experiment.training_hash()[:8]} s{experiment.runtime.seed}"
    )


def open_run(
    training: Training,
    start: ResumePoint,
    run_name: str | None,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    tracking_uri: str | None,
) -> RunLogger:
    """Continue the run of ``start``, or start a new one (named ``run_name``, else
    ``default_run_name``) with the run's tags, flat params and config; a resumed training is
    tagged with the epoch it resumed after."""
    experiment, runtime, output, run_id = training.experiment, training.runtime, training.output, start.run_id
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
        run_name=run_name or default_run_name(experiment),
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
    if start.epoch:
        tracker.set_tags({"resumed_from_epoch": start.epoch})
    if start.in_epoch:  # a mid-epoch checkpoint: the global step it resumed after
        tracker.set_tags({"resumed_from_step": start.step})
    return tracker


def replay_history(tracker: RunLogger, history: list[dict[str, float]]) -> None:
    """Log the finished epochs' metrics into a new run of a resumed training (as ``epoch.*``)."""
    for record in history:
        tracker.log_metrics(
            {f"epoch.{k}": v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"])
        )


def log_artifacts(tracker: RunLogger, training: Training, history: list[dict[str, float]]) -> None:
    """The training-curve PNG and, if asked, the encoder weights (both written to the checkpoint folder)."""
    experiment, output = training.experiment, training.output
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
        torch.save(training.method.encoder.state_dict(), path)
        tracker.log_artifact(path)


def close_failed_run(tracker: RunLogger | None, exc: BaseException) -> None:
    """End the run as KILLED (Ctrl-C; a stop signal, tagged ``preempted`` with where it stopped, and
    continued by ``--resume``) or FAILED with the reason; a tracking error here is only logged, so
    that the original error is the one raised."""
    if tracker is None:
        return
    status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Preempted)) else "FAILED"
    try:
        if isinstance(exc, Preempted):
            tracker.set_tags({"preempted": str(exc)[:5000]})
        else:
            tracker.set_tags({"failure_reason": f"{exc.__class__.__name__}: {exc}"[:5000]})
        tracker.finish(status)
    except Exception as tracking_exc:  # keep the original error
        log.warning("could not close the MLflow run: %s", tracking_exc)
