"""Evaluation benchmarks: ``benchmarks/*.yaml`` files naming a dataset, a protocol and its settings.

A benchmark file is read with the safe YAML loader and validated before any compute, like an
experiment config: an unknown key gets a "did you mean" suggestion, and a bad value raises one
``ConfigError`` that names the file, the key, the value and what is allowed. Schema (defaults
in brackets; the protocol defaults are the paper's Slow 8×8 R-50 settings)::

    name: ucf101-split1            # [file stem] metric names: eval.<name>.<protocol>.top1 / .top5
    dataset: ucf101                # [custom] tag: synthetic, kinetics400, ucf101, hmdb51, ...
    protocol: finetune             # linear | knn | finetune (required)
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
    knn:      {k, temperature}
    finetune: {epochs, lr, batch_size, weight_decay, momentum, warmup_epochs, dropout,
               augment: {crop_scale, aspect, flip, color_p, color_strength, grayscale_p, blur_p}}

``train`` and ``val`` expand ``${VAR}`` and ``${VAR:-default}`` (the default also applies
when VAR is empty, as in the shell); a relative path resolves against the current directory.
An unset variable without default, or a manifest that does not exist, is an error at load
that names the file and the variable to set.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import DATASETS, AugmentConfig
from harness.schema import ConfigError, check_value, expand_env, field_spec, unknown_key_hint

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
    warmup_epochs: float = field_spec(0.0, help="linear warmup epochs before the half-cosine", min=0.0)
    dropout: float = field_spec(0.5, help="dropout before the classifier", min=0.0, max=1.0)
    augment: AugmentConfig = field_spec(factory=finetune_augment, help="per-clip training augmentation")


ProtocolSpec = LinearSpec | KnnSpec | FinetuneSpec
PROTOCOL_SPECS: dict[str, type] = {"linear": LinearSpec, "knn": KnnSpec, "finetune": FinetuneSpec}
PROTOCOL_NAMES = tuple(PROTOCOL_SPECS)


@dataclass
class Benchmark:
    """One validated benchmark: where the data is, which views, which protocol with which settings."""

    name: str
    dataset: str
    protocol: str
    train: Path
    val: Path
    views: ViewsSpec
    settings: ProtocolSpec
    source: Path

    def metric(self, what: str) -> str:
        """The metric name of ``what`` (top1, top5): ``eval.<name>.<protocol>.<what>``."""
        return f"eval.{self.name}.{self.protocol}.{what}"


TOP_LEVEL = ("name", "dataset", "protocol", "train", "val", "views", *PROTOCOL_NAMES)


def load_benchmark(path: str | Path, check_files: bool = True) -> Benchmark:
    """Read and validate a benchmark file.

    Args:
        path: the YAML file.
        check_files: fail when a manifest does not exist.

    Raises:
        ConfigError: for the first bad key or value, naming ``path``.
    """
    path = Path(path)
    try:
        return _build(_read_mapping(path), path, check_files)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.value, exc.allowed, str(path)) from None


def _read_mapping(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (safe loader)."""
    if not path.is_file():
        raise ConfigError(
            "benchmark", str(path), "a path to an existing benchmark YAML file (benchmarks/*.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("benchmark", str(path), f"valid YAML; the parser says: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("benchmark", str(path), f"a YAML mapping with keys {', '.join(TOP_LEVEL)}")
    return raw


def _build(raw: dict[str, Any], path: Path, check_files: bool) -> Benchmark:
    """A ``Benchmark`` from the file's mapping; every key and value checked."""
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(key, raw[key], unknown_key_hint(key, list(TOP_LEVEL)))
    protocol = _required(raw, "protocol")
    if protocol not in PROTOCOL_NAMES:
        raise ConfigError("protocol", protocol, _choice_hint(str(protocol), PROTOCOL_NAMES))
    for other in PROTOCOL_NAMES:
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
    dataset = raw.get("dataset", "custom")
    if dataset not in DATASETS:
        raise ConfigError("dataset", dataset, _choice_hint(str(dataset), DATASETS))
    views = _section("views", ViewsSpec(), raw.get("views"))
    for key in ("train_spatial", "test_spatial"):
        if getattr(views, key) not in (1, 3):
            raise ConfigError(
                f"views.{key}", getattr(views, key), "1 (centre crop) or 3 (both ends and the centre)"
            )
    return Benchmark(
        name=name,
        dataset=dataset,
        protocol=protocol,
        train=_manifest_path("train", _required(raw, "train"), check_files),
        val=_manifest_path("val", _required(raw, "val"), check_files),
        views=views,
        settings=_section(protocol, PROTOCOL_SPECS[protocol](), raw.get(protocol)),
        source=path,
    )


def _required(raw: dict[str, Any], key: str) -> Any:
    if raw.get(key) is None:
        raise ConfigError(key, None, "a value is required")
    return raw[key]


def _choice_hint(value: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    return (f"did you mean {close[0]!r}? " if close else "") + f"one of {', '.join(choices)}"


def _section(prefix: str, default: Any, values: Any) -> Any:
    """``default`` (a spec dataclass) with the keys of ``values`` checked and applied; nested specs recurse."""
    if values is None:
        return default
    if not isinstance(values, dict):
        raise ConfigError(prefix, values, f"a mapping of {prefix} settings")
    fields = {f.name: f for f in dataclasses.fields(default)}
    changes = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}"
        if key not in fields:
            raise ConfigError(dotted, value, unknown_key_hint(dotted, [f"{prefix}.{k}" for k in fields]))
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _section(dotted, current, value)
        else:
            hint = typing.get_type_hints(type(default))[key]
            changes[key] = check_value(dotted, value, hint, fields[key].metadata, check_files=False)
    return dataclasses.replace(default, **changes)


def _manifest_path(key: str, raw: Any, check_files: bool) -> Path:
    """Expand environment variables in a manifest path, make it absolute and (optionally) check it exists."""
    if not isinstance(raw, str):
        raise ConfigError(
            key, raw, "a manifest path (CSV path,label), optionally with ${VAR} or ${VAR:-default}"
        )
    expanded, variables = expand_env(key, raw)
    path = Path(expanded).expanduser().absolute()
    if check_files and not path.is_file():
        settings = ", ".join(f"{name}={os.environ.get(name, '')!r}" for name in variables)
        origin = (
            f"; the path comes from {settings}: set it to the folder that holds the manifests"
            if variables
            else ""
        )
        raise ConfigError(
            key,
            raw,
            f"an existing manifest, but there is no file at {path}{origin} "
            "(make manifests with `rho data import` or `rho data synth`)",
        )
    return path
