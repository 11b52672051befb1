"""SlowFast checkpoints into ours: a facebookresearch/SlowFast ``.pyth`` of a Slow R-50 (its
``ContrastiveModel`` of configs/contrastive_ssl, or a plain ``ResNet``) becomes a rho-harness
checkpoint whose encoder is our ``slow_r50`` with those weights, so ``rho evaluate`` runs our
protocols on the official model-zoo models.

A SlowFast checkpoint (``slowfast/utils/checkpoint.py: save_checkpoint``) is a ``torch.save``'d
dict ``{"epoch": 0-based last epoch, "model_state": state dict, "optimizer_state", "cfg": YAML}``.
The mapping is strict and one to one, SlowFast's names (``video_model_builder.ResNet``,
``stem_helper.ResNetBasicStem``, ``resnet_helper.ResBlock`` / ``BottleneckTransform``) to
pytorchvideo's ``create_resnet`` that ``harness.backbones`` builds::

    s1.pathway0_stem.conv / .bn                     body.blocks.0.conv / .norm
    s{k}.pathway0_res{i}.branch1 / .branch1_bn      body.blocks.{k-1}.res_blocks.{i}.branch1_conv / .branch1_norm
    s{k}.pathway0_res{i}.branch2.{a,b,c}            body.blocks.{k-1}.res_blocks.{i}.branch2.conv_{a,b,c}
    s{k}.pathway0_res{i}.branch2.{a,b,c}_bn         body.blocks.{k-1}.res_blocks.{i}.branch2.norm_{a,b,c}

under the ``backbone.`` prefix of a ``ContrastiveModel``. What is not the encoder is dropped by
name (``IGNORED``): the projection / prediction heads and classifier (``head.``), the momentum
encoder (``backbone_hist.``), queues, SwAV prototypes and kNN memories. Any other key, any key
our encoder has and the file lacks, and any shape that differs is an error naming them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from harness.checkpoint import CheckpointError, read_tensor_file, rng_state, save_checkpoint
from harness.config import Experiment, load_experiment
from harness.train import build_method

BACKBONE = "slow_r50"
CONTRASTIVE_PREFIX = "backbone."  # ContrastiveModel.backbone (slowfast/models/contrastive.py)

#: Keys of a SlowFast model that are not the encoder, dropped on purpose: (prefix, what it is).
IGNORED: tuple[tuple[str, str], ...] = (
    ("head.", "projection / prediction MLPs or the classifier (ResNetBasicHead)"),
    ("backbone_hist.", "the momentum encoder of MoCo / BYOL"),
    ("ptr", "the MoCo queue pointer"),
    ("queue_x", "the MoCo queue"),
    ("iter", "the MoCo iteration counter"),
    ("swav_prototypes", "the SwAV prototypes"),
    ("queue_swav", "the SwAV queue"),
    ("knn_mem.", "the kNN monitor's memory"),
    ("memory.", "the memory bank (CONTRASTIVE.TYPE mem)"),
)

#: CONTRASTIVE.TYPE of SlowFast → our method name.
METHODS = {"moco": "moco", "byol": "byol", "simclr": "simclr", "swav": "swav"}

_OURS = re.compile(
    r"body\.blocks\.(?P<stage>\d+)\.(?:(?P<stem>conv|norm)"
    r"|res_blocks\.(?P<block>\d+)\.(?P<part>branch1_conv|branch1_norm|branch2\.(?:conv|norm)_[abc]))"
    r"\.(?P<tensor>\w+)"
)
_PARTS = {"branch1_conv": "branch1", "branch1_norm": "branch1_bn"}


def slowfast_name(ours: str) -> str:
    """SlowFast's name of a key of our ``slow_r50`` state dict (``body.blocks.1.res_blocks.0.branch2.norm_a.weight``
    → ``s2.pathway0_res0.branch2.a_bn.weight``)."""
    match = _OURS.fullmatch(ours)
    if match is None:
        raise ValueError(f"{ours} is not a key of pytorchvideo's create_resnet")
    stage, tensor = int(match["stage"]), match["tensor"]
    if match["stem"]:
        return f"s1.pathway0_stem.{'conv' if match['stem'] == 'conv' else 'bn'}.{tensor}"
    part = match["part"]
    if part in _PARTS:
        part = _PARTS[part]
    else:  # branch2.conv_a → branch2.a, branch2.norm_a → branch2.a_bn
        kind, letter = part.removeprefix("branch2.").split("_")
        part = f"branch2.{letter}" + ("_bn" if kind == "norm" else "")
    return f"s{stage + 1}.pathway0_res{match['block']}.{part}.{tensor}"


@dataclass(frozen=True)
class SlowFastCheckpoint:
    """What ``read_slowfast`` found: the model state, the 0-based last epoch, the config (parsed; {} if none)."""

    path: Path
    model_state: dict[str, torch.Tensor]
    epoch: int
    cfg: dict[str, Any]


def read_slowfast(path: str | Path) -> SlowFastCheckpoint:
    """Read a SlowFast ``.pyth`` with ``torch.load(weights_only=True)`` (no code in the file runs).

    Raises:
        CheckpointError: no such file, not loadable safely, or not a SlowFast checkpoint.
    """
    path = Path(path)
    blob = read_tensor_file(
        path,
        "SlowFast checkpoint",
        "; a SlowFast .pyth is a torch.save'd dict with model_state; rho refuses files that need "
        "arbitrary code to load",
    )
    if not isinstance(blob, dict) or not isinstance(blob.get("model_state"), dict):
        keys = ", ".join(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{path} is not a SlowFast checkpoint: it has no model_state dict (found: {keys})"
        )
    cfg: dict[str, Any] = {}
    if isinstance(blob.get("cfg"), str):
        try:
            cfg = yaml.safe_load(blob["cfg"]) or {}
        except yaml.YAMLError:
            cfg = {}  # the config only supplies defaults (method, ρ); the weights do not need it
    epoch = blob.get("epoch")
    return SlowFastCheckpoint(path, blob["model_state"], int(epoch) if isinstance(epoch, int) else -1, cfg)


def _ignored(key: str) -> bool:
    return any(key.startswith(prefix) for prefix, _ in IGNORED)


def _listed(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def encoder_state(
    checkpoint: SlowFastCheckpoint, ours: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our encoder's state dict (keys of ``ours``) filled from the SlowFast model state, and the
    SlowFast keys dropped as ``IGNORED``.

    Raises:
        CheckpointError: naming every SlowFast key with no place in ours, every key of ours the
            file lacks (with its SlowFast name), and every shape mismatch.
    """
    state = checkpoint.model_state
    contrastive = any(key.startswith(CONTRASTIVE_PREFIX) for key in state)
    wanted = {slowfast_name(key): key for key in ours}  # SlowFast name → ours
    found: dict[str, torch.Tensor] = {}
    ignored, unmapped = [], []
    for key, tensor in state.items():
        name = key.removeprefix(CONTRASTIVE_PREFIX) if contrastive else key
        if _ignored(name):  # backbone.head.*, and the ContrastiveModel's own backbone_hist.*, queue_x, ...
            ignored.append(key)
        elif name in wanted:
            found[name] = tensor
        else:
            unmapped.append(key)
    prefix = CONTRASTIVE_PREFIX if contrastive else ""
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} keys have no place in our {BACKBONE}: {_listed(unmapped)}")
    missing = [f"{prefix}{name} (ours: {wanted[name]})" for name in wanted if name not in found]
    if missing:
        problems.append(f"{len(missing)} keys of our {BACKBONE} are missing: {_listed(missing, 4)}")
    shapes = [
        f"{prefix}{name} {tuple(tensor.shape)} vs ours {wanted[name]} {tuple(ours[wanted[name]].shape)}"
        for name, tensor in found.items()
        if tensor.shape != ours[wanted[name]].shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: {_listed(shapes, 4)}")
    if problems:
        raise CheckpointError(
            f"{checkpoint.path} does not map onto our {BACKBONE}: {'; '.join(problems)}. Only SlowFast Slow "
            "R-50 checkpoints import (MODEL.ARCH slow, RESNET.DEPTH 50, plain BatchNorm; ResNet or "
            "ContrastiveModel)"
        )
    return {wanted[name]: tensor for name, tensor in found.items()}, ignored


def _cfg(checkpoint: SlowFastCheckpoint, *keys: str) -> Any:
    value: Any = checkpoint.cfg
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def imported_experiment(
    checkpoint: SlowFastCheckpoint, method: str | None, config: str | Path | None, overrides: list[str]
) -> Experiment:
    """The experiment an imported checkpoint records: ``config`` (or the defaults) with backbone
    ``slow_r50``, the method (``method``, else the file's CONTRASTIVE.TYPE), ρ
    (TRAIN_CROP_NUM_TEMPORAL), T and τ (NUM_FRAMES, SAMPLING_RATE) and the epochs trained, then
    ``overrides``.

    Raises:
        CheckpointError: no method given and none in the file's config.
    """
    name = method or METHODS.get(str(_cfg(checkpoint, "CONTRASTIVE", "TYPE")))
    if name is None:
        found = _cfg(checkpoint, "CONTRASTIVE", "TYPE")
        raise CheckpointError(
            f"{checkpoint.path}: which method trained it? Its config's CONTRASTIVE.TYPE is {found!r} "
            f"(known: {', '.join(METHODS)}); pass --method NAME"
        )
    base: dict[str, Any] = {"backbone": {"name": BACKBONE}, "method": {"name": name}}
    data = {
        "clips": _cfg(checkpoint, "DATA", "TRAIN_CROP_NUM_TEMPORAL"),
        "frames": _cfg(checkpoint, "DATA", "NUM_FRAMES"),
        "stride": _cfg(checkpoint, "DATA", "SAMPLING_RATE"),
    }
    base["data"] = {key: value for key, value in data.items() if isinstance(value, int) and value > 0}
    if checkpoint.epoch >= 0:
        warmup = _cfg(checkpoint, "SOLVER", "WARMUP_EPOCHS")
        epochs = checkpoint.epoch + 1  # SlowFast stores the 0-based epoch (its file: epoch_{epoch + 1})
        fits = isinstance(warmup, (int, float)) and 0 <= warmup < epochs
        base["optim"] = {"epochs": epochs, "warmup_epochs": float(warmup) if fits else 0.0}
    tree_overrides = [f"backbone.name={BACKBONE}", f"method.name={name}", *overrides]
    return load_experiment(config, tree_overrides, check_files=False, base=base)


@dataclass(frozen=True)
class ImportResult:
    """What ``import_slowfast`` wrote: the checkpoint, its experiment, the tensors loaded and dropped."""

    path: Path
    experiment: Experiment
    loaded: int
    ignored: list[str]


def import_slowfast(
    source: str | Path,
    out: str | Path,
    method: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
) -> ImportResult:
    """Write ``out``: a rho-harness checkpoint (``harness.checkpoint`` format, what ``rho evaluate``
    reads) of the method ``imported_experiment`` names, whose encoder holds the SlowFast Slow R-50
    weights of ``source``. The method's heads (and momentum encoder) keep their initialisation:
    the checkpoint is for evaluation, not for resuming pretraining.

    Raises:
        CheckpointError: ``source`` unreadable or not mapping onto our Slow R-50 (names the keys).
        ConfigError: a bad ``config`` or override.
    """
    checkpoint = read_slowfast(source)
    experiment = imported_experiment(checkpoint, method, config, list(overrides or []))
    model = build_method(experiment)
    state, ignored = encoder_state(checkpoint, model.encoder.state_dict())
    model.encoder.load_state_dict(state, strict=True)
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    save_checkpoint(
        out,
        {
            "config_hash": experiment.training_hash(),
            "config": experiment.to_yaml(),
            "epoch": experiment.optim.epochs if checkpoint.epoch >= 0 else 0,
            "step": 0,
            "method": model.state_dict(),
            "optimizer": {},
            "rng": rng_state(),
            "history": [],
            "run_id": None,
            "imported_from": {"file": str(Path(source).resolve()), "sha256": digest, "format": "slowfast"},
        },
    )
    return ImportResult(Path(out), experiment, len(state), ignored)
