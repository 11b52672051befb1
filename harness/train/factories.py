"""Builders from a config: the method, the training dataset and its loader, the optimizer.

Used by pretraining and by the commands and benchmarks that need the same objects
(``rho data inspect``, ``rho evaluate`` through ``load_trained``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import methods
from harness import backbones
from harness.checkpoint import CheckpointError, load_checkpoint
from harness.config import ConfigError, Experiment, OptimConfig, load_experiment_text
from harness.data import MultiClipDataset, read_manifest, train_transform
from harness.data.batched import DeferredAugment, collate_frames
from harness.data.dataset import sampling_options
from harness.data.decode import CacheFull, FrameCache
from harness.data.epoch_order import EpochBatchSampler, EpochSampler
from harness.data.manifest import num_classes
from harness.optim import build_optimizer


def build_method(experiment: Experiment) -> methods.SSLMethod:
    """Backbone + method as the config says.

    Raises:
        ConfigError: for a method that needs tokens (VideoMAE) on a backbone that gives none, or
            more clips per video than ``data.clips`` (vjepa's ``cross_clip``).
    """
    backbone, feature_dim = backbones.build(experiment.backbone.name, **experiment.backbone.params)
    if methods.get(experiment.method.name).needs_tokens and not backbones.gives_tokens(backbone):
        raise ConfigError(
            "backbone.name",
            experiment.backbone.name,
            f"a backbone that gives tokens, which method {experiment.method.name} needs: "
            f"{', '.join(backbones.TOKEN_BACKBONES)}",
        )
    method = methods.build(experiment.method.name, backbone, feature_dim, **experiment.method.params)
    if method.clips_needed > experiment.data.clips:
        raise ConfigError(
            "data.clips",
            experiment.data.clips,
            f"at least {method.clips_needed}: method {experiment.method.name} as configured takes "
            f"{method.clips_needed} clips of each video (vjepa's cross_clip predicts one clip from another)",
        )
    return method


def load_trained(path: str | Path) -> tuple[methods.SSLMethod, Experiment, dict[str, Any]]:
    """Rebuild the method of a checkpoint from the config stored in it, with its weights.

    Raises:
        CheckpointError: weights that do not fit the method its config describes (missing,
            unexpected or reshaped tensors), in one line naming the checkpoint and the counts.
    """
    state = load_checkpoint(path)
    experiment = load_experiment_text(state["config"], source=str(path))
    method = build_method(experiment)
    _check_weights(path, experiment, method.state_dict(), state["method"])
    method.load_state_dict(state["method"])
    return method, experiment, state


def _check_weights(path: str | Path, experiment: Experiment, expected: dict, found: Any) -> None:
    """Refuse ``found`` (a checkpoint's method state) unless it has exactly the tensors, and shapes,
    of ``expected`` (the state of the method its config builds)."""
    found = found if isinstance(found, dict) else {}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        key
        for key in expected
        if key in found
        and isinstance(found[key], torch.Tensor)
        and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    examples = [f"missing {missing[0]!r}"] if missing else []
    examples += [f"unexpected {unexpected[0]!r}"] if unexpected else []
    if reshaped:
        key = reshaped[0]
        examples.append(
            f"{key!r} is {list(found[key].shape)} in the checkpoint, {list(expected[key].shape)} in the method"
        )
    raise CheckpointError(
        f"checkpoint {path}: its weights do not fit its method {experiment.method.name} with backbone "
        f"{experiment.backbone.name} (as its stored config builds them): {len(missing)} missing, "
        f"{len(unexpected)} unexpected and {len(reshaped)} reshaped of {len(expected)} tensors "
        f"({'; '.join(examples)}); the config or the weights were changed after it was written: "
        "evaluate the checkpoint its run wrote, or bring outside weights in with `rho import-checkpoint`"
    )


def with_num_classes(experiment: Experiment, entries: list) -> Experiment:
    """Fill ``method.num_classes`` from the manifest for methods that take it (supervised)."""
    if (
        "num_classes" not in methods.params_of(experiment.method.name)
        or experiment.method.params.get("num_classes") is not None
    ):
        return experiment
    filled = copy.deepcopy(experiment)
    filled.method.params["num_classes"] = num_classes(entries)
    return filled


def train_dataset(
    experiment: Experiment, entries: list | None = None, *, deferred: bool = False
) -> MultiClipDataset:
    """The pretraining dataset the config describes: ρ clips per video, each augmented on its own
    (``deferred``: only decoded, with the parameters drawn, for ``data.augment.placement: device``)."""
    data = experiment.data
    transform = (DeferredAugment if deferred else train_transform)(data.crop, data.augment)
    return MultiClipDataset(
        entries
        if entries is not None
        else read_manifest(data.train, allow_outside_root=data.allow_outside_root),
        data.clips,
        data.frames,
        data.stride,
        transform=transform,
        seed=experiment.runtime.seed,
        cache=FrameCache(autorotate=data.autorotate) if data.cache else None,
        source=data.train,
        min_views=methods.get(experiment.method.name).min_clips,
        **sampling_options(data),
    )


def fill_cache(dataset: MultiClipDataset, manifest: str, verbose: bool) -> None:
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


def train_loader(
    dataset: MultiClipDataset,
    sampler: EpochSampler,
    batch_size: int,
    start_epoch: int,
    stop_epoch: int,
    *,
    workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """One loader for epochs ``start_epoch`` … ``stop_epoch - 1``: its workers run ahead across epoch ends.

    Its own generator keeps the global RNG untouched, so a resumed run stays bit-identical
    (items are seeded by (seed, epoch, index); worker seeds do not matter).
    """
    return DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(sampler, batch_size, start_epoch, stop_epoch),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=collate_frames,  # the default collate; deferred items' frames padded to one size
        generator=torch.Generator().manual_seed(seed),
    )


def train_optimizer(
    method: methods.SSLMethod, config: OptimConfig, peak_lr: float
) -> torch.optim.Optimizer | None:
    """The optimizer over the method's parameter groups; None for a method with nothing to train."""
    if not method.trainable:
        return None
    return build_optimizer(method.param_groups(config.weight_decay), config, peak_lr)
