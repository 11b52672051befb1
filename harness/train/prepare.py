"""A run's set-up before its first step: every manifest it will read and the batch size checked,
the stores checked for writing, the method on its device (the same weights on every rank), the
dataset and its sampler, the schedule and the optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness import distributed as dist_utils
from harness.config import ConfigError, DataConfig, Experiment
from harness.data import ManifestError, MultiClipDataset, read_manifest
from harness.data.batched import DeviceAugment
from harness.data.epoch_order import EpochSampler
from harness.preflight import check_store, check_writable
from harness.runtime import Runtime, seed_everything
from harness.tracking import resolve_tracking_uri
from harness.train.factories import build_method, train_dataset, train_optimizer, with_num_classes
from harness.train.loop import Schedule
from methods import SSLMethod


@dataclass
class Training:
    """Everything ``prepare_training`` builds: what trains, on which data, on what, where it writes."""

    experiment: Experiment  # with ``method.num_classes`` filled from the manifest where needed
    runtime: Runtime
    output: Path  # the checkpoint folder
    config_hash: str  # ``experiment.training_hash()``: checkpoints and feature caches are keyed by it
    method: SSLMethod
    dataset: MultiClipDataset
    sampler: EpochSampler  # this rank's share of each epoch
    local_batch: int  # videos per step on this rank
    schedule: Schedule
    optimizer: torch.optim.Optimizer | None  # None when the method has nothing to train
    augment: DeviceAugment | None = (
        None  # data.augment.placement: device: augments each batch on runtime.device
    )


def checkpoint_dir(experiment: Experiment, run_name: str | None = None) -> Path:
    """Where a run's checkpoints go: ``runtime.output_dir/<run name or training hash>``."""
    return Path(experiment.runtime.output_dir) / (run_name or experiment.training_hash())


def prepare_training(
    experiment: Experiment,
    runtime: Runtime,
    output: Path | None,
    run_name: str | None,
    tracking_uri: str | None,
) -> Training:
    """Seed; check every manifest, the batch size against the data and the stores for writing;
    build the method, the dataset, its sampler, the schedule and the optimizer."""
    seed_everything(experiment.runtime.seed)
    data = experiment.data
    entries = read_manifest(data.train, allow_outside_root=data.allow_outside_root)
    check_other_manifests(experiment)
    local_batch = _local_batch(data, len(entries), runtime.world_size)
    experiment = with_num_classes(experiment, entries)
    output = Path(output) if output is not None else checkpoint_dir(experiment, run_name)
    if runtime.is_main:  # a read-only or full disk fails here, before any compute
        check_store(resolve_tracking_uri(tracking_uri, experiment.runtime.tracking_uri), "MLflow store")
        check_writable(output, "checkpoint folder (runtime.output_dir)")
    method = _on_device(build_method(experiment), experiment, runtime)
    deferred = data.augment.placement == "device"
    dataset = train_dataset(experiment, entries, deferred=deferred)
    sampler = EpochSampler(len(dataset), experiment.runtime.seed, True, runtime.rank, runtime.world_size)
    schedule = Schedule.of(experiment.optim, len(sampler) // local_batch, data.batch_size)
    optimizer = train_optimizer(method, experiment.optim, schedule.peak_lr)
    return Training(
        experiment,
        runtime,
        output,
        experiment.training_hash(),
        method,
        dataset,
        sampler,
        local_batch,
        schedule,
        optimizer,
        DeviceAugment(data.crop, data.augment, runtime.device, runtime.channels_last) if deferred else None,
    )


def check_other_manifests(experiment: Experiment) -> None:
    """Read every manifest the run will read besides ``data.train``, as it will read them: the kNN
    monitor's ``data.val`` (under the data root rules) and each ``eval.benchmarks`` file with its
    ``train`` and ``val`` manifests. A bad one is found here, before any compute and before the
    MLflow run exists, not after the first epoch or at the end of training.

    Raises:
        ManifestError: naming the config key, the manifest, its line and the fix.
        ConfigError: a bad benchmark file.
    """
    from harness.eval import check_manifests, load_benchmark

    data = experiment.data
    if data.val:
        try:
            read_manifest(data.val, allow_outside_root=data.allow_outside_root)
        except ManifestError as exc:
            raise ManifestError(f"data.val: {exc}") from None
    for path in experiment.eval.benchmarks:
        try:
            check_manifests(load_benchmark(path))
        except ManifestError as exc:
            raise ManifestError(f"eval.benchmarks: {exc}") from None


def _local_batch(data: DataConfig, videos: int, world_size: int) -> int:
    """``data.batch_size`` split over the ranks; refused when it does not split or exceeds the data."""
    global_batch = data.batch_size
    if global_batch % world_size:
        raise ValueError(f"data.batch_size {global_batch} is not divisible by the {world_size} ranks")
    local_batch = global_batch // world_size
    if videos // world_size < local_batch:
        raise ValueError(
            f"data.batch_size {global_batch} exceeds the {videos} videos of {data.train}; lower data.batch_size"
        )
    return local_batch


def _on_device(method: SSLMethod, experiment: Experiment, runtime: Runtime) -> SSLMethod:
    """The method on the runtime's device (SyncBatchNorm under DDP if asked), rank 0's weights everywhere."""
    if experiment.backbone.sync_bn and runtime.distributed:
        if runtime.device.type != "cuda":
            raise ConfigError(
                "backbone.sync_bn", True, "false on CPU: torch's SyncBatchNorm runs on GPUs only"
            )
        try:
            group = dist_utils.sync_group(experiment.backbone.sync_bn_group)
        except ValueError as exc:
            raise ConfigError("backbone.sync_bn_group", experiment.backbone.sync_bn_group, str(exc)) from None
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method, process_group=group)
    method = runtime.prepare_model(method)
    dist_utils.broadcast_state(method)
    return method
