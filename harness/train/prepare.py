"""A run's set-up before its first step: every manifest it will read (labels against the known
classes), the batch size against the data and the method's BatchNorm, the crop against the
frames, the stores checked for writing, the method on its device (the same weights on every
rank), the dataset and its sampler, the schedule and the optimizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import methods
from harness import backbones
from harness import distributed as dist_utils
from harness.config import ConfigError, DataConfig, Experiment
from harness.data import ManifestError, MultiClipDataset
from harness.data.batched import DeviceAugment
from harness.data.dataset import MAX_SKIPS, unreadable_videos
from harness.data.epoch_order import EpochSampler
from harness.data.manifest import (
    ClassCount,
    ManifestRows,
    VideoEntry,
    checked_manifest,
    dataset_classes,
    synth_stamp,
)
from harness.preflight import check_store, check_writable
from harness.runtime import Runtime, seed_everything
from harness.tracking import resolve_tracking_uri
from harness.train.factories import build_method, train_dataset, train_optimizer, with_num_classes
from harness.train.loop import Schedule
from methods import SSLMethod

log = logging.getLogger(__name__)


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
    entries = preflight_manifests(experiment)
    local_batch = _local_batch(data, len(entries), runtime.world_size)
    experiment = with_num_classes(experiment, entries)
    check_frames(data, entries, warn=runtime.is_main)
    method = build_method(experiment)
    _check_batch_norm(method, experiment, local_batch, runtime)
    output = Path(output) if output is not None else checkpoint_dir(experiment, run_name)
    if runtime.is_main:  # a read-only or full disk fails here, before any compute
        check_store(resolve_tracking_uri(tracking_uri, experiment.runtime.tracking_uri), "MLflow store")
        check_writable(output, "checkpoint folder (runtime.output_dir)")
    method = _on_device(method, experiment, runtime)
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


def preflight_manifests(experiment: Experiment) -> ManifestRows:
    """``data.train``'s rows, every manifest of the run checked: on rank 0 only under
    torch.distributed, its verdict shared, so that every rank raises the same error.

    The files of a manifest are looked up (an ``lstat`` a row: 240k for Kinetics, each a round
    trip on NFS or Lustre) once per run, not once per rank; the other ranks read ``data.train``'s
    rows without looking its files up (rank 0 has, meanwhile). The reads go through
    ``checked_manifest``: a second trial in the same process (a study's worker) takes the
    checked rows of an unchanged manifest from memory.

    Raises:
        ManifestError: naming the config key, the manifest, its line and the fix.
        ConfigError: a bad benchmark file.
    """
    data = experiment.data
    classes = [dataset_classes(data.dataset, "data.dataset"), _method_classes(experiment)]
    rows, error = None, None
    try:
        if dist_utils.rank() == 0:
            rows = checked_manifest(data.train, allow_outside_root=data.allow_outside_root, classes=classes)
            check_other_manifests(experiment)
        else:  # the same rows, their files left to rank 0
            rows = checked_manifest(data.train, check_files=False, classes=classes)
    except Exception as exc:  # every rank must reach the broadcast, whatever failed
        error = exc
    dist_utils.raise_from_rank(error)
    if error is not None:  # rank 0 passed where this rank failed: no less an error
        raise error
    assert rows is not None
    return rows


def check_other_manifests(experiment: Experiment) -> None:
    """Read every manifest the run will read besides ``data.train``, as it will read them: the kNN
    monitor's ``data.val`` (under the data root rules) and each ``eval.benchmarks`` file with its
    ``train`` and ``val`` manifests (and that an attentive benchmark has a backbone with token
    features). A bad one is found here, before any compute and before the
    MLflow run exists, not after the first epoch or at the end of training. Each is read with
    ``checked_manifest``: once per process while it does not change.

    Raises:
        ManifestError: naming the config key, the manifest, its line and the fix.
        ConfigError: a bad benchmark file, or an attentive benchmark on a backbone without tokens.
    """
    from harness.eval import load_benchmark

    data = experiment.data
    if data.val:
        try:
            checked_manifest(
                data.val,
                allow_outside_root=data.allow_outside_root,
                classes=[dataset_classes(data.dataset, "data.dataset")],
            )
        except ManifestError as exc:
            raise ManifestError(f"data.val: {exc}") from None
    for path in experiment.eval.benchmarks:
        benchmark = load_benchmark(path)
        if benchmark.protocol == "attentive" and not _backbone_gives_tokens(experiment):
            raise ConfigError(
                "backbone.name",
                experiment.backbone.name,
                f"a backbone that gives token features, which eval.benchmarks' {benchmark.source} "
                f"(protocol attentive) needs: {', '.join(backbones.TOKEN_BACKBONES)}; or drop that benchmark",
            )
        for split in ("train", "val"):  # as harness.eval.check_manifests, through the cache
            try:
                checked_manifest(
                    getattr(benchmark, split), classes=[dataset_classes(benchmark.dataset, "dataset")]
                )
            except ManifestError as exc:
                raise ManifestError(
                    f"eval.benchmarks: benchmark {benchmark.source} ({split}): {exc}"
                ) from None


def _backbone_gives_tokens(experiment: Experiment) -> bool:
    """Whether the configured backbone has token features, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        module, _ = backbones.build(experiment.backbone.name, **experiment.backbone.params)
    return backbones.gives_tokens(module)


def _method_classes(experiment: Experiment) -> ClassCount | None:
    """``method.num_classes`` where the config sets it (supervised): every label must be below it."""
    count = experiment.method.params.get("num_classes")
    if not isinstance(count, int) or "num_classes" not in methods.params_of(experiment.method.name):
        return None
    return ClassCount(
        count,
        f"method.num_classes is {count}",
        "raise method.num_classes, or leave it out (it is then read from the manifest)",
    )


def _local_batch(data: DataConfig, videos: int, world_size: int) -> int:
    """``data.batch_size`` split over the ranks; refused when it does not split or exceeds the data.

    Raises:
        ConfigError: naming ``data.batch_size``, the manifest and its row count.
    """
    global_batch = data.batch_size
    if global_batch % world_size:
        raise ConfigError(
            "data.batch_size",
            global_batch,
            f"a multiple of the {world_size} ranks (each takes an equal share of a step)",
        )
    local_batch = global_batch // world_size
    if videos // world_size < local_batch:
        ranks = f" ({videos // world_size} per rank on {world_size} ranks)" if world_size > 1 else ""
        most = videos // world_size * world_size
        fix = f"set data.batch_size <= {most}" if most else f"use fewer ranks than {world_size}"
        raise ConfigError(
            "data.batch_size",
            global_batch,
            f"at most the {videos} rows of the manifest {data.train}{ranks}: a step takes "
            f"data.batch_size videos; {fix}, or add rows to the manifest",
        )
    return local_batch


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _check_batch_norm(method: SSLMethod, experiment: Experiment, local_batch: int, runtime: Runtime) -> None:
    """Refuse a batch of one video per BatchNorm when the method has BatchNorm layers.

    Training BatchNorm normalises each clip with the mean and variance of its batch. With one
    video (per rank, or per SyncBatchNorm group) a head's BatchNorm1d has one value per channel
    and torch stops mid-step ("Expected more than 1 value per channel"), and so does the
    backbone's last BatchNorm3d where its map is 1×1×1; on larger maps it would silently
    normalise each video by its own statistics, not the batch's. Refused rather than patched:
    no setting makes a batch of one mean what the method's BatchNorm means.

    Raises:
        ConfigError: naming ``data.batch_size``, the method, the backbone and why.
    """
    if local_batch >= 2 or not method.trainable:
        return
    norms = [name for name, module in method.named_modules() if isinstance(module, BATCH_NORMS)]
    if not norms:
        return
    samples = local_batch
    if experiment.backbone.sync_bn and runtime.distributed:
        samples *= experiment.backbone.sync_bn_group or runtime.world_size
    if samples >= 2:
        return
    at_least = 2 * runtime.world_size
    per_rank = f" (2 per rank on {runtime.world_size} ranks)" if runtime.world_size > 1 else ""
    raise ConfigError(
        "data.batch_size",
        experiment.data.batch_size,
        f"at least {at_least}{per_rank} for method {experiment.method.name} with backbone "
        f"{experiment.backbone.name}: its {len(norms)} BatchNorm layers (e.g. {norms[0]}) normalise each "
        "clip with its batch's statistics, which a batch of one video does not have; "
        f"set data.batch_size={at_least}",
    )


def check_frames(data: DataConfig, entries: Sequence[VideoEntry], warn: bool = True) -> None:
    """The training videos can be opened, and ``data.crop`` fits in their frames.

    Videos are opened in manifest order until one opens (at most ``MAX_SKIPS``): a manifest
    none of whose videos opens is refused here, before any compute. A crop larger than the
    frames only upsamples them: where the frame size is certain (the ``spec.json`` of ``rho
    data synth`` beside the manifest, or ``data.decode_short_side``, which never scales up) it
    is refused; otherwise it is compared with the first video that opens and warned about once
    (``warn``; other videos may be larger).

    Raises:
        ConfigError: naming ``data.crop``, its value, the frame size, where it comes from and the fix.
        UnreadableVideos: every video of the manifest fails to open.
    """
    spec = synth_stamp(Path(data.train).parent)
    size = spec.get("size") if spec else None
    limits = []
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        limits.append((size, f"the frames of {data.train} are {size}x{size} pixels (its spec.json)"))
    if data.decode_short_side is not None:
        short = data.decode_short_side
        limits.append((short, f"data.decode_short_side scales the frames to a short side of {short}"))
    if limits:
        short, why = min(limits)
        if data.crop > short:
            raise ConfigError(
                "data.crop",
                data.crop,
                f"at most {short}: {why}, and a larger crop only upsamples them; set data.crop <= {short}",
            )
    probed = _first_frame_size(data.train, entries)
    if spec is not None or probed is None or not warn:
        return
    path, width, height = probed
    short = min(width, height, data.decode_short_side or width)
    if data.crop > short:
        log.warning(
            "data.crop %d is larger than the frames of %s (its first video, %s, is %dx%d): "
            "its crops are upsampled; set data.crop <= %d unless the other videos are larger",
            data.crop,
            data.train,
            path,
            width,
            height,
            short,
        )


def _first_frame_size(manifest: str, entries: Sequence[VideoEntry]) -> tuple[Path, int, int] | None:
    """(path, width, height) of the first video that opens, trying at most ``MAX_SKIPS``; None
    when those all fail in a longer manifest (training skips them, and says so).

    Raises:
        UnreadableVideos: every video of the manifest fails to open.
    """
    import av

    from harness.data.decode import BadVideo, open_video, probe

    bad: list[tuple[str, str]] = []
    for entry in entries[:MAX_SKIPS]:
        try:
            container = open_video(entry.path)
            try:
                info = probe(container, entry.path)
            finally:
                container.close()
        except (BadVideo, av.FFmpegError, OSError, ValueError) as exc:
            bad.append((str(entry.path), str(exc)))
            continue
        return entry.path, info.width, info.height
    if entries and len(bad) == len(entries):
        raise unreadable_videos(manifest, len(entries), bad)
    return None


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
