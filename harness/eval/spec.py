"""Evaluation benchmarks: ``benchmarks/*.yaml`` files naming a dataset, a protocol and its settings.

A benchmark file is read with the safe YAML loader and validated before any compute, like an
experiment config: an unknown key gets a "did you mean" suggestion, and a bad value raises one
``ConfigError`` that names the file, the key, the value and what is allowed. Schema (defaults
in brackets; the protocol defaults are the paper's Slow 8×8 R-50 settings)::

    name: ucf101-split1            # [file stem] metric names: eval.<name>.<protocol>.top1 / .top5
    dataset: ucf101                # [custom] tag: synthetic, kinetics400, ucf101, hmdb51, ...
    protocol: finetune             # linear | linear_slowfast | knn | finetune | a plugin's (required)
    train: ${RHO_DATA}/ucf101/split1/train.csv   # training manifest (required)
    val: ${RHO_DATA}/ucf101/split1/val.csv       # test manifest (required)
    views:                         # clips, and the fixed views ViewDataset takes of each video
      frames: 8                    # [8] T
      stride: 8                    # [8] τ, in frames of fps
      fps: null                    # [null] resample to this rate (null: each video's own)
      crop: 224                    # [224]
      short_side: 256              # [null = crop × 256/224] resize before cropping
      train_temporal: 1            # [1] views per training video (linear, knn)
      train_spatial: 1             # [1] 1 (centre) or 3 (both ends and centre of the long side)
      test_temporal: 10            # [10] views per test video, averaged
      test_spatial: 3              # [3] 1 or 3
    finetune: {...}                # the section of the protocol, and only that one:
    linear:   {epochs, lr, batch_size, weight_decay, momentum, warmup_epochs}
    linear_slowfast: {epochs, lr, batch_size, weight_decay, momentum, warmup_epochs, train_crop,
               backbone_bn, augment: {...}}
    knn:      {k, temperature}
    finetune: {epochs, lr, batch_size, weight_decay, momentum, warmup_epochs, dropout,
               augment: {crop_scale, aspect, flip, color_p, color_strength, grayscale_p, blur_p}}
    <plugin>: the fields of its settings dataclass

Installed distributions add protocols through the entry-point group ``rho.protocols``
(``name = "package.module:PROTOCOL"``, an object with ``settings``, a dataclass of
``field_spec`` fields, and ``run``: ``harness.eval.Protocol``); their section is validated
like the built-in ones, and a built-in name wins over an entry point of the same name.

``train`` and ``val`` expand ``${VAR}`` and ``${VAR:-default}`` (the default also applies
when VAR is empty, as in the shell); a relative path resolves against the current directory.
An unset variable without default, or a manifest that does not exist, is an error at load
that names the file and the variable to set.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import plugins
from harness.config import DATASETS, AugmentConfig
from harness.data.manifest import ManifestError, dataset_classes, read_manifest
from harness.resources import locate
from harness.schema import ConfigError, build_section, check_value, field_spec, read_mapping, unknown_key_hint

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ViewsSpec:
    """Clip shape and the fixed views taken of each video (see ``harness.data.views``)."""

    frames: int = field_spec(8, help="T, frames per clip", min=1)
    stride: int = field_spec(8, help="τ, frames between sampled frames (at fps)", min=1)
    fps: float | None = field_spec(None, help="resample to this frame rate (null: the video's own)", gt=0.0)
    crop: int = field_spec(224, help="crop side in pixels", gt=0)
    short_side: int | None = field_spec(
        None, help="resize the short side to this before cropping (null: crop*256/224)", gt=0
    )
    train_temporal: int = field_spec(1, help="temporal views per training video", min=1)
    train_spatial: int = field_spec(1, help="spatial views per training video: 1 or 3")
    test_temporal: int = field_spec(10, help="temporal views per test video", min=1)
    test_spatial: int = field_spec(3, help="spatial views per test video: 1 or 3")


@dataclass
class LinearSpec:
    """Linear classifier on frozen, cached, standardised features.

    SlowFast's linear_k400 schedule (60 epochs, 8 warmup, cosine, wd 0, momentum 0.9); lr 0.1 at
    batch 256 because the features are standardised (SlowFast: 0.5 at batch 64 on raw features).
    """

    epochs: int = field_spec(60, help="passes over the training features", min=1)
    lr: float = field_spec(0.1, help="peak learning rate (SGD)", gt=0.0)
    batch_size: int = field_spec(256, help="features per step", min=1)
    weight_decay: float = field_spec(0.0, help="L2 weight decay", min=0.0)
    momentum: float = field_spec(0.9, help="SGD momentum", min=0.0, max=1.0)
    warmup_epochs: float = field_spec(8.0, help="linear warmup epochs before the half-cosine", min=0.0)


@dataclass
class KnnSpec:
    """Weighted kNN on frozen, cached features (InstDisc / SlowFast: k 200, τ 0.07)."""

    k: int = field_spec(200, help="neighbours (capped at the training set size)", min=1)
    temperature: float = field_spec(0.07, help="votes are weighted exp(cosine / temperature)", gt=0.0)


def finetune_augment() -> AugmentConfig:
    """The fine-tuning augmentation of SlowFast's contrastive_ssl UCF101 configs, as a random resized crop.

    Short side jittered in [256, 320] then a 224 crop is an area of (224/320)² … (224/256)² of a
    square frame; colour jitter 0.4/0.4/0.4 and hue 0.1; grayscale 0.2; no blur.
    """
    return AugmentConfig(
        crop_scale=[0.49, 0.766], color_strength=[0.4, 0.4, 0.4, 0.1], grayscale_p=0.2, blur_p=0.0
    )


@dataclass
class FinetuneSpec:
    """Whole network + linear head trained end to end (SlowFast finetune_ucf: 200 epochs, batch 64, lr 0.005)."""

    epochs: int = field_spec(200, help="passes over the training videos", min=1)
    lr: float = field_spec(0.005, help="peak learning rate (SGD)", gt=0.0)
    batch_size: int = field_spec(64, help="clips per step", min=1)
    weight_decay: float = field_spec(1e-4, help="weight decay (not on biases and norm layers)", min=0.0)
    momentum: float = field_spec(0.9, help="SGD momentum", min=0.0, max=1.0)
    nesterov: bool = field_spec(True, help="Nesterov momentum (SlowFast SOLVER.NESTEROV, defaults.py:842)")
    warmup_epochs: float = field_spec(0.0, help="linear warmup epochs before the half-cosine", min=0.0)
    dropout: float = field_spec(0.5, help="dropout before the classifier", min=0.0, max=1.0)
    augment: AugmentConfig = field_spec(factory=finetune_augment, help="per-clip training augmentation")


def linear_clip_augment() -> AugmentConfig:
    """The training views of SlowFast's linear_k400 config, as a random resized crop: no colour.

    SlowFast jitters the short side in [256, 320] (TRAIN_JITTER_SCALES) and takes a random 224
    crop and a flip: a square of area (224/320)² … (224/256)² of a square frame.
    """
    return AugmentConfig(
        crop_scale=[0.49, 0.766], aspect=[1.0, 1.0], color_p=0.0, grayscale_p=0.0, blur_p=0.0
    )


BACKBONE_BN_MODES = ("train", "eval")


@dataclass
class LinearSlowFastSpec:
    """SlowFast's linear protocol: a linear classifier on the frozen encoder's outputs for augmented
    random training clips, the encoder's BatchNorm in train mode (its running statistics follow
    the training clips; its weights stay), tested on the views with those statistics.

    Defaults: configs/contrastive_ssl/linear_k400_Slow_8x8_R50_syn0.yaml (batch 64, lr 0.5,
    60 epochs, 8 warmup epochs from 0, one cosine over all epochs, momentum 0.9, weight decay 0,
    MODEL.DETACH_FINAL_FC: only the classifier learns).
    """

    epochs: int = field_spec(60, help="passes over the training videos (one random clip each)", min=1)
    lr: float = field_spec(0.5, help="peak learning rate (SGD) at batch_size", gt=0.0)
    batch_size: int = field_spec(64, help="clips per step", min=1)
    weight_decay: float = field_spec(0.0, help="weight decay of the classifier", min=0.0)
    momentum: float = field_spec(0.9, help="SGD momentum", min=0.0, max=1.0)
    nesterov: bool = field_spec(True, help="Nesterov momentum (SlowFast SOLVER.NESTEROV, defaults.py:842)")
    warmup_epochs: float = field_spec(
        8.0, help="linear warmup from 0 to the cosine's value at its end (SlowFast's schedule)", min=0.0
    )
    train_crop: int | None = field_spec(
        224, help="training crop side (null: views.crop; SlowFast trains at 224, tests at 256)", gt=0
    )
    backbone_bn: str = field_spec(
        "train",
        help="the encoder's BatchNorm while the classifier trains: train (statistics updated) or eval",
        choices=BACKBONE_BN_MODES,
    )
    augment: AugmentConfig = field_spec(factory=linear_clip_augment, help="per-clip training augmentation")


@dataclass
class AttentiveSpec:
    """V-JEPA's attentive probe on frozen, cached token features: one learned query cross-attends
    to a video's tokens (every temporal view's, concatenated), then a linear classifier; AdamW, a
    half-cosine lr to 0, gradients clipped at 1. Needs an encoder that gives tokens (the video ViTs).

    Defaults: facebookresearch/jepa configs/evals/vitl16_k400_16x8x3.yaml (20 epochs, lr 1e-3,
    weight decay 0.01, no warmup; batch 4 per GPU x 64 GPUs = 256) and AttentiveClassifier (one
    query, heads as the encoder's, MLP ratio 4).
    """

    epochs: int = field_spec(20, help="passes over the training videos' cached tokens", min=1)
    lr: float = field_spec(1e-3, help="peak learning rate (AdamW)", gt=0.0)
    batch_size: int = field_spec(256, help="samples (a video's spatial view) per step", min=1)
    weight_decay: float = field_spec(0.01, help="AdamW weight decay (not on biases and norms)", min=0.0)
    warmup_epochs: float = field_spec(0.0, help="linear warmup epochs before the half-cosine", min=0.0)
    heads: int | None = field_spec(
        None, help="attention heads of the pooler (null: the encoder's num_heads, else width / 64)", min=1
    )
    mlp_ratio: float = field_spec(4.0, help="the pooler's MLP width over the token width", gt=0.0)
    clip_grad: float = field_spec(1.0, help="gradient norm clip (0: none)", min=0.0)


ProtocolSpec = LinearSpec | LinearSlowFastSpec | KnnSpec | FinetuneSpec | AttentiveSpec
PROTOCOL_SPECS: dict[str, type] = {
    "linear": LinearSpec,
    "linear_slowfast": LinearSlowFastSpec,
    "knn": KnnSpec,
    "finetune": FinetuneSpec,
    "attentive": AttentiveSpec,
}
PROTOCOL_NAMES = tuple(PROTOCOL_SPECS)  # the built-in protocols
PROTOCOL_ENTRY_POINT_GROUP = "rho.protocols"


@dataclass
class Benchmark:
    """One validated benchmark: where the data is, which views, which protocol with which settings."""

    name: str
    dataset: str
    protocol: str
    train: Path
    val: Path
    views: ViewsSpec
    settings: Any  # a ProtocolSpec, or the settings dataclass of a protocol from an entry point
    source: Path

    def metric(self, what: str) -> str:
        """The metric name of ``what`` (top1, top5): ``eval.<name>.<protocol>.<what>``.

        The protocol is always in the name, so the two linear protocols (``linear``,
        ``linear_slowfast``) of one benchmark name log different metrics.
        """
        return f"eval.{self.name}.{self.protocol}.{what}"


BENCHMARK_KEYS = ("name", "dataset", "protocol", "train", "val", "views")  # besides the protocol sections
TOP_LEVEL = (*BENCHMARK_KEYS, *PROTOCOL_NAMES)


def _is_protocol(protocol: Any) -> bool:
    """Whether an entry point of ``rho.protocols`` loaded a protocol: a ``settings`` dataclass and a ``run``."""
    settings = getattr(protocol, "settings", None)
    return (
        isinstance(settings, type)
        and dataclasses.is_dataclass(settings)
        and callable(getattr(protocol, "run", None))
    )


def protocol_names() -> list[str]:
    """Every protocol a benchmark file may name: the built-in ones, then those of entry points
    (``rho.protocols``), sorted; an entry point named like a benchmark key (``views``, ...) is
    left out, as its section could not be told from that key."""
    added = set(plugins.plugins(PROTOCOL_ENTRY_POINT_GROUP)) - {*PROTOCOL_NAMES, *BENCHMARK_KEYS}
    return [*PROTOCOL_NAMES, *sorted(added)]


def plugin_protocol(name: str) -> Any:
    """The protocol (``settings`` and ``run``) that the ``rho.protocols`` entry point ``name`` loads
    (for a name that is not built in: ``PROTOCOL_SPECS``).

    Raises:
        ValueError: for an unknown name (listing the choices), or an entry point without a
            ``settings`` dataclass and a ``run`` function.
    """
    if name in PROTOCOL_SPECS:
        raise ValueError(f"{name} is a built-in protocol (PROTOCOL_SPECS), not an entry point")
    return plugins.lookup(
        PROTOCOL_SPECS,
        PROTOCOL_ENTRY_POINT_GROUP,
        name,
        kind="protocol",
        accept=_is_protocol,
        must_be="a protocol (a settings dataclass and a run function: harness.eval.Protocol)",
    )


def protocol_settings(name: str) -> type:
    """The settings class of protocol ``name``: ``PROTOCOL_SPECS``' for a built-in, else its entry point's."""
    return PROTOCOL_SPECS[name] if name in PROTOCOL_SPECS else plugin_protocol(name).settings


MANIFEST_RULES = {
    "file": True,
    "help": "a manifest CSV path,label; make one with `rho data import` or `rho data synth`",
}


def load_benchmark(path: str | Path, check_files: bool = True) -> Benchmark:
    """Read and validate a benchmark file.

    Args:
        path: the YAML file.
        check_files: fail when a manifest does not exist.

    Raises:
        ConfigError: for the first bad key or value, naming ``path``.
    """
    path = locate(path)
    raw = read_mapping(
        path, "benchmark", "benchmark YAML file (benchmarks/*.yaml)", f"keys {', '.join(TOP_LEVEL)}"
    )
    try:
        return _build(raw, path, check_files)
    except ConfigError as exc:
        raise exc.located(str(path)) from None


def check_manifests(benchmark: Benchmark) -> None:
    """Read the benchmark's ``train`` and ``val`` manifests as evaluation will, so that a bad row
    (a missing file, a bad label, a label past the classes of the benchmark's ``dataset`` or of
    the manifest's classes.txt or spec.json) is found before any compute.

    Raises:
        ManifestError: naming the benchmark file, the manifest, its line and the fix.
    """
    for split in ("train", "val"):
        try:
            read_manifest(getattr(benchmark, split), classes=[dataset_classes(benchmark.dataset, "dataset")])
        except ManifestError as exc:
            raise ManifestError(f"benchmark {benchmark.source} ({split}): {exc}") from None


def _build(raw: dict[str, Any], path: Path, check_files: bool) -> Benchmark:
    """A ``Benchmark`` from the file's mapping; every key and value checked."""
    protocols = protocol_names()
    for key in raw:
        if key not in BENCHMARK_KEYS and key not in protocols:
            raise ConfigError(key, raw[key], unknown_key_hint(key, [*BENCHMARK_KEYS, *protocols]))
    protocol = check_value("protocol", raw.get("protocol"), str, {"choices": protocols}, False)
    try:
        settings_class = protocol_settings(protocol)
    except ValueError as exc:  # an entry point that does not load a protocol
        raise ConfigError("protocol", protocol, str(exc)) from None
    for other in protocols:
        if other != protocol and other in raw:
            raise ConfigError(
                other, raw[other], f"only the section of the protocol ({protocol}) is allowed here"
            )
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            "name",
            name,
            "letters, digits, '_', '-' and '.', starting with a letter or digit (used in metric names)",
        )
    dataset = check_value("dataset", raw.get("dataset", "custom"), str, {"choices": DATASETS}, False)
    views = build_section("views", ViewsSpec, _mapping("views", raw.get("views")))
    for key in ("train_spatial", "test_spatial"):
        if getattr(views, key) not in (1, 3):
            raise ConfigError(
                f"views.{key}", getattr(views, key), "1 (centre crop) or 3 (both ends and the centre)"
            )
    return Benchmark(
        name=name,
        dataset=dataset,
        protocol=protocol,
        train=check_value("train", raw.get("train"), Path, MANIFEST_RULES, check_files),
        val=check_value("val", raw.get("val"), Path, MANIFEST_RULES, check_files),
        views=views,
        settings=build_section(protocol, settings_class, _mapping(protocol, raw.get(protocol))),
        source=path,
    )


def _mapping(key: str, values: Any) -> dict[str, Any] | None:
    """A section's mapping as written (None when absent); anything else is refused."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(key, values, f"a mapping of {key} settings")
    return values
