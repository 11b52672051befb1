"""The experiment configuration: one typed, validated ``Experiment`` loaded from YAML.

Sections: ``data``, ``backbone``, ``method``, ``optim``, ``eval``, ``runtime``. A YAML file
(read with the safe loader) gives any subset of the keys; dotted overrides
(``data.clips=3 method.temperature=0.2``) are applied on top; then every value is checked
before any compute starts (the mechanism is ``harness.schema``). A bad value raises one
``ConfigError`` that names the key, the value and what is allowed; unknown keys get a "did
you mean" suggestion.

``method`` holds ``name`` plus the method's own keyword parameters, which are validated
against the method's constructor (``methods.params_of``); ``backbone`` likewise holds
``name`` plus keyword parameters for ``harness.backbones.build``, validated against
``harness.backbones.params_of``. Both are read from the source where it says them
(``harness.signatures``), so that validating a config imports no torch.

Errors name where the value was written: the file, or ``command line`` and the override as
typed (``command line: data.clip=3 is not allowed: unknown key; did you mean data.clips?``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import plugins, signatures
from harness.errors import RhoError
from harness.resources import locate
from harness.schema import (
    SHORT_LIST,
    ConfigError,
    MissingFile,
    build_section,
    check_value,
    choice_hint,
    did_you_mean,
    field_spec,
    read_mapping,
    type_hints,
    unknown_key_hint,
)

DATASETS = ("synthetic", "kinetics400", "kinetics600", "ucf101", "hmdb51", "ssv2", "custom")
# classes of each dataset family that has a fixed number (synthetic: its spec.json; custom: none)
DATASET_CLASSES = {"kinetics400": 400, "kinetics600": 600, "ucf101": 101, "hmdb51": 51, "ssv2": 174}
OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALING = ("linear", "sqrt", "none")
SCHEDULES = ("cosine_after_warmup", "cosine_with_warmup")
DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("pyav", "torchcodec")  # the built-in data.decoder backends (harness.data.decode.decoder)
DECODER_ENTRY_POINT_GROUP = "rho.decoders"  # where installed distributions add more
DECODE_DEVICES = ("cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
CLIP_ORDERS = ("time", "shuffled")  # data.clip_order
T_MAX_MODES = ("start_to_start", "gap")  # data.t_max_mode: what t_max bounds (harness.data.clip_starts)
AUGMENT_PLACEMENTS = ("worker", "device")


class DecoderNames:
    """The names ``data.decoder`` takes, as its ``choices``: the built-in ``DECODERS`` and the
    entry points of ``rho.decoders`` installed when a config is checked (not when this module
    was imported), sorted; a refusal lists them with a "did you mean" suggestion."""

    def names(self) -> list[str]:
        return plugins.available(dict.fromkeys(DECODERS), DECODER_ENTRY_POINT_GROUP)

    def __contains__(self, name: object) -> bool:
        return name in DECODERS or name in self.names()

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return repr(tuple(self.names()))


@dataclass
class AugmentConfig:
    """Per-clip spatial augmentation (the paper's aug+), identical across the frames of a clip."""

    crop_scale: list[float] = field_spec(
        factory=lambda: [0.2, 0.766], help="random resized crop area range", pair01=True
    )
    aspect: list[float] = field_spec(
        factory=lambda: [0.75, 4 / 3], help="random resized crop aspect range", pair=True
    )
    flip: float = field_spec(0.5, help="horizontal flip probability", min=0.0, max=1.0)
    color_p: float = field_spec(0.8, help="colour jitter probability", min=0.0, max=1.0)
    color_strength: list[float] = field_spec(
        factory=lambda: [0.6, 0.6, 0.6, 0.15], help="brightness, contrast, saturation, hue", length=4, min=0.0
    )
    grayscale_p: float = field_spec(0.2, help="grayscale probability", min=0.0, max=1.0)
    blur_p: float = field_spec(0.0, help="Gaussian blur probability", min=0.0, max=1.0)
    colour_frame: str = field_spec(
        "crop",
        help="what the colour steps see: crop (ours), or frame: the whole decoded clip, as SlowFast "
        "(contrast blends towards the whole clip's mean luma, blur sigma in decoded-frame pixels)",
        choices=("crop", "frame"),
    )
    placement: str = field_spec(
        "worker",
        help="where clips are augmented: worker (each clip in the DataLoader workers) or device (the "
        "workers only decode and draw the parameters; the training process augments each batch on its "
        "device, the GPU where there is one); the same draws and results either way",
        choices=AUGMENT_PLACEMENTS,
    )


@dataclass
class DataConfig:
    """Where the videos are and how ρ clips are sampled from each."""

    dataset: str = field_spec("synthetic", help="dataset family (tags and defaults)", choices=DATASETS)
    train: str = field_spec("data/synth/train.csv", help="training manifest (CSV path,label)", file=True)
    val: str | None = field_spec(None, help="validation manifest, for the online kNN monitor", file=True)
    clips: int = field_spec(2, help="ρ, clips per video", min=1)
    frames: int = field_spec(8, help="T, frames per clip", min=1)
    stride: int = field_spec(8, help="τ, frames between sampled frames (at fps)", min=1)
    fps: float | None = field_spec(None, help="resample to this frame rate (null: the video's own)", gt=0.0)
    t_max: float | None = field_spec(
        None,
        help="max seconds between clip starts, or between clips with t_max_mode gap (null: global)",
        min=0.0,
    )
    t_max_mode: str = field_spec(
        "start_to_start",
        help="what t_max bounds: start_to_start (any two clip starts; ours) or gap (from a clip's last "
        "frame to the next clip's first, clip by clip: SlowFast's CONTRASTIVE.DELTA_CLIPS_MAX, in s)",
        choices=T_MAX_MODES,
    )
    t_min: float | None = field_spec(
        None,
        help="t_max_mode gap only: the smallest gap in seconds, < 0 lets clips overlap "
        "(SlowFast's DELTA_CLIPS_MIN; null: none)",
    )
    clip_order: str = field_spec(
        "time",
        help="order of an item's clips: time (earliest first) or shuffled (a random order per item, "
        "SlowFast's temporally_rnd_clips); decides the methods' adjacent pairs and first two clips",
        choices=CLIP_ORDERS,
    )
    crop: int = field_spec(224, help="output crop side in pixels", gt=0)
    short_side: int | None = field_spec(
        None, help="evaluation resize of the short side (null: crop*256/224)", gt=0
    )
    batch_size: int = field_spec(64, help="global batch size in videos", min=1)
    workers: int = field_spec(2, help="DataLoader worker processes", min=0)
    seek_threshold: float | None = field_spec(
        None,
        help="null: seek where the keyframe index says it saves decoding (short-GOP and all-intra "
        "files: per GOP or frame; long GOPs: gaps over 1 s); a number: seek across gaps longer than "
        "this (s) whatever the GOP",
        min=0.0,
    )
    cache: bool = field_spec(
        False,
        help="decode each training video once and keep its frames in memory (small datasets; at most half the free RAM)",
    )
    autorotate: bool = field_spec(
        True, help="turn frames as the video's display matrix says (phone videos), as players and ffmpeg do"
    )
    decoder: str = field_spec(
        "pyav",
        help="decoding backend: pyav, torchcodec (pip install 'rho-harness[torchcodec]'; same frames), "
        "or one a package adds (entry points rho.decoders)",
        choices=DecoderNames(),
    )
    decode_device: str = field_spec(
        "cpu",
        help="where torchcodec decodes: cpu, or cuda (NVDEC; needs data.workers 0 and no data.cache)",
        choices=DECODE_DEVICES,
    )
    decode_short_side: int | None = field_spec(
        None,
        help="scale training frames in the decoder to this short side (never up; null: full size)",
        gt=0,
    )
    allow_outside_root: bool = field_spec(
        False, help="allow manifest rows outside the manifest's folder (../, absolute paths, symlinks out)"
    )
    augment: AugmentConfig = field_spec(factory=AugmentConfig, help="per-clip augmentation")


@dataclass
class BackboneConfig:
    """The encoder: a name from ``harness.backbones.available()`` plus its keyword parameters."""

    name: str = field_spec("r3d_tiny", help="backbone name", registry="backbones")
    params: dict[str, Any] = field_spec(factory=dict, help="keyword parameters for harness.backbones.build")
    sync_bn: bool = field_spec(False, help="convert BatchNorm to SyncBatchNorm under DDP")
    sync_bn_group: int | None = field_spec(
        None,
        help="ranks per SyncBatchNorm group, consecutive (SlowFast BN.NUM_SYNC_DEVICES); null: all ranks",
        gt=0,
    )


@dataclass
class MethodConfig:
    """The SSL method: a name from ``methods.available()`` plus its keyword parameters."""

    name: str = field_spec("simclr", help="method name", registry="methods")
    params: dict[str, Any] = field_spec(factory=dict, help="the method's keyword parameters")


@dataclass
class OptimConfig:
    """Optimiser and schedule: linear warmup and a half-cosine (``harness.optim.lr_at``)."""

    name: str = field_spec("sgd", help="optimiser", choices=OPTIMIZERS)
    lr: float = field_spec(0.6, help="base learning rate at base_batch_size", gt=0.0)
    base_batch_size: int = field_spec(256, help="the batch size that lr is given for", min=1)
    lr_scaling: str = field_spec(
        "linear", help="lr = base lr × (global batch / base_batch_size)^(1 or ½ or 0)", choices=LR_SCALING
    )
    weight_decay: float = field_spec(1e-6, help="weight decay (not on biases and norms)", min=0.0)
    momentum: float = field_spec(0.9, help="SGD/LARS momentum", min=0.0, max=1.0)
    nesterov: bool = field_spec(False, help="Nesterov momentum (SGD and LARS; SlowFast: on)")
    trust: float = field_spec(0.001, help="LARS trust coefficient", gt=0.0)
    betas: list[float] = field_spec(factory=lambda: [0.9, 0.999], help="AdamW betas", pair01=True)
    epochs: int = field_spec(200, help="pretraining epochs", min=1)
    warmup_epochs: float = field_spec(35.0, help="linear warmup epochs (0 for none)", min=0.0)
    schedule: str = field_spec(
        "cosine_after_warmup",
        help="cosine_after_warmup: warmup to the peak, then a half-cosine over the rest; "
        "cosine_with_warmup: SlowFast's one half-cosine over all epochs, the warmup ramping to its value",
        choices=SCHEDULES,
    )
    warmup_start_lr: float = field_spec(
        0.0,
        help="lr where the warmup starts, at base_batch_size (scaled like lr; SlowFast WARMUP_START_LR)",
        min=0.0,
    )
    min_lr_ratio: float = field_spec(0.0, help="final lr as a fraction of the peak", min=0.0, max=1.0)
    clip_grad: float | None = field_spec(None, help="clip the gradient norm to this (null: off)", gt=0.0)


@dataclass
class EvalConfig:
    """Evaluation after pretraining and the online kNN monitor."""

    benchmarks: list[str] = field_spec(
        factory=list,
        help="benchmark YAML files to evaluate after pretraining (a relative path not in the current "
        "folder names the shipped benchmarks/ file)",
        files=True,
        resolve=locate,
    )
    knn_monitor: bool = field_spec(False, help="kNN accuracy on data.val after every epoch")
    knn_k: int = field_spec(200, help="neighbours for the kNN monitor", min=1)
    knn_monitor_videos: int | None = field_spec(
        5000,
        help="kNN monitor: at most this many videos of data.train and of data.val, a fixed random subset "
        "(null: all); the monitor runs after every epoch",
        min=1,
    )


@dataclass
class RuntimeConfig:
    """Where and how the run executes."""

    seed: int = field_spec(0, help="random seed", min=0)
    device: str = field_spec("auto", help="auto picks cuda when available", choices=DEVICES)
    precision: str = field_spec("auto", help="auto is bf16 on CUDA, fp32 on CPU", choices=PRECISIONS)
    channels_last: bool = field_spec(True, help="channels_last_3d memory format on CUDA")
    output_dir: str = field_spec(
        "mlruns/checkpoints", help="folder for checkpoints (${VAR} expands: ${SCRATCH}/ckpt)", env=True
    )
    tracking_uri: str | None = field_spec(
        None, help="MLflow tracking URI (null: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    experiment: str = field_spec("rho-pretrain", help="MLflow experiment name")
    log_every: int = field_spec(10, help="log step metrics every N steps", min=1)
    save_encoder: bool = field_spec(False, help="log the final encoder weights as an MLflow artifact")
    checkpoint_every: int | None = field_spec(
        None,
        help="also write last.pt every N optimizer steps within an epoch, resumable there (null: at epoch ends only)",
        min=1,
    )
    checkpoint_seconds: float | None = field_spec(
        None,
        help="also write last.pt mid-epoch once this many seconds passed since the last one (null: off)",
        gt=0.0,
    )
    stop_signals: list[str] = field_spec(
        factory=lambda: ["SIGTERM", "SIGUSR1"],
        help="signals that stop the run at the next step boundary with a checkpoint there and exit "
        "status 75 (SLURM sends them before a time limit; --resume continues); of SIGTERM, SIGUSR1, "
        "SIGUSR2, SIGHUP, SIGINT",
    )


@dataclass
class Experiment:
    """One pretraining (and evaluation) run, fully resolved."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts, with method/backbone params inlined as in YAML."""
        out = dataclasses.asdict(self)
        for section in ("method", "backbone"):
            params = out[section].pop("params")
            out[section].update(params)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted key → value, e.g. for MLflow params."""
        return flatten(self.to_dict())

    # data keys that change how a run executes, never what it trains (kept out of training hashes)
    # (the decoders give the same frames: which one and where it runs is execution too)
    EXECUTION_DATA_KEYS = ("workers", "val", "allow_outside_root", "cache", "decoder", "decode_device")

    def training_hash(self) -> str:
        """Hash of everything that shapes the trained weights (not eval, logging or paths)."""
        d = self.to_dict()
        d.pop("eval")
        runtime = d.pop("runtime")
        d["seed"] = runtime["seed"]
        for key in self.EXECUTION_DATA_KEYS:
            d["data"].pop(key)
        if d["data"]["decode_short_side"] is None:
            d["data"].pop("decode_short_side")  # full-size frames: the hash configs had before the key
        d["data"]["augment"].pop("placement")  # where the same draws are applied, not what they are
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = typing.get_type_hints(Experiment)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["data.clips=3", "eval.benchmarks=[a.yaml]"]`` → dotted key → value (YAML-typed)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, item, "overrides are written key=value, e.g. data.clips=3")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(key, raw, f"the value is not valid YAML ({exc.__class__.__name__})") from None
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for key ``a.b``, creating dicts on the way."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                ".".join(parts[: parts.index(part) + 1]), child, "a section (mapping), to set " + key
            )
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file's YAML mapping with the safe loader; errors name the file."""
    return read_mapping(path, "config", "YAML file", f"sections {', '.join(SECTIONS)}")


COMMAND_LINE = "command line"
"""Where errors say a ``KEY=VALUE`` override was written (``load_experiment`` with a list)."""


def load_experiment(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    check_files: bool = True,
    base: dict[str, Any] | None = None,
) -> Experiment:
    """Load and validate an experiment: ``base`` dict, then the YAML file, then the overrides.

    ``overrides`` as a list are ``KEY=VALUE`` texts from the command line: a refusal of what
    one of them set names it as typed (``command line: data.clip=3 ...``); anything else is
    named by the file.

    Raises:
        ConfigError: the first invalid key or value, before anything is computed.
    """
    tree: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    path = locate(path) if path is not None else None
    source = str(path) if path is not None else None
    if path is not None:
        for key, value in flatten(read_yaml(path)).items():
            set_dotted(tree, key, value)
    written: dict[str, str] = {}
    if isinstance(overrides, list):
        items = {}
        for item in overrides:
            try:
                items.update(parse_overrides([item]))
            except ConfigError as exc:
                raise exc.located(COMMAND_LINE, item) from None
            written[item.partition("=")[0].strip()] = item
    else:
        items = dict(overrides or {})
    try:
        for key, value in items.items():
            set_dotted(tree, key, value)
        return build_experiment(tree, check_files=check_files)
    except ConfigError as exc:
        item = _written_override(exc.key, written)
        if item is not None:
            raise exc.located(COMMAND_LINE, item) from None
        if source and exc.source != source:
            raise exc.located(source) from None
        raise


def _written_override(key: str, written: dict[str, str]) -> str | None:
    """The override (as typed) that set ``key``: the same key, a section above it or a key below it."""

    def related(override: str) -> bool:
        return any(a == b or a.startswith((f"{b}.", f"{b}[")) for a, b in ((key, override), (override, key)))

    matches = [override for override in written if related(override)]
    return written[max(matches, key=len)] if matches else None


def load_experiment_text(text: str, source: str = "<text>", check_files: bool = False) -> Experiment:
    """An experiment from YAML text (e.g. the copy stored in a checkpoint or an MLflow run)."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", source, f"valid YAML; the parser says: {exc}") from None
    try:
        return build_experiment(tree, check_files=check_files)
    except ConfigError as exc:
        raise exc.located(source) from None


def build_experiment(tree: dict[str, Any], check_files: bool = True) -> Experiment:
    """Turn a nested dict into a validated ``Experiment``."""
    unknown = [k for k in tree if k not in SECTIONS]
    if unknown:
        raise ConfigError(unknown[0], tree[unknown[0]], unknown_key_hint(unknown[0], list(SECTIONS)))
    sections = {}
    for name, cls in SECTIONS.items():
        value = tree.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(name, value, f"a mapping of {name} settings")
        if cls in (MethodConfig, BackboneConfig):
            sections[name] = _build_named(name, cls, value)
            continue
        try:
            sections[name] = build_section(
                name, cls, value, check_files, suggest=all_keys(), listing="rho config keys {section}"
            )
        except MissingFile as exc:
            raise _how_to_make(exc, value) from None
    experiment = Experiment(**sections)
    _check_cross_fields(experiment)
    if check_files:
        _check_decoder(experiment.data)
    return experiment


def _how_to_make(exc: MissingFile, data: dict[str, Any]) -> MissingFile:
    """A missing synthetic manifest, with the command that makes the data."""
    if exc.key in ("data.train", "data.val") and data.get("dataset", DataConfig.dataset) == "synthetic":
        folder = Path(str(exc.value)).parent
        folder = folder if "$" not in str(folder) else Path("data/synth")
        return exc.with_hint(
            f"`rho data synth {folder}` makes the synthetic dataset (`make demo` makes data/synth)"
        )
    return exc


def all_keys() -> list[str]:
    """Every dotted key an experiment has (method/backbone params excluded)."""
    return list(_all_keys())


@functools.cache
def _all_keys() -> tuple[str, ...]:
    """``all_keys`` computed once: the config classes do not change while a process runs, and
    ``typing.get_type_hints`` is slow (a 1,000-point study validates every point's experiment)."""
    keys: list[str] = []

    def walk(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            t = type_hints(cls)[f.name]
            if dataclasses.is_dataclass(t):
                walk(f"{prefix}{f.name}.", t)
            elif f.name != "params":
                keys.append(f"{prefix}{f.name}")

    walk("", Experiment)
    return tuple(keys)


def _registry(kind: str) -> Any:
    """The imported registry of ``kind`` (``method``: ``methods``; ``backbone``: ``harness.backbones``)."""
    if kind == "method":
        import methods as registry
    else:
        from harness import backbones as registry
    return registry


def registry_names(kind: str) -> list[str]:
    """The names ``method.name`` (``kind`` ``method``) or ``backbone.name`` accepts; imports no torch."""
    names = signatures.available(kind)
    return names if names is not None else _registry(kind).available()


def registry_params(kind: str, name: str) -> dict[str, signatures.Param]:
    """The keyword parameters of method or backbone ``name`` (``signatures.params``)."""
    return signatures.params(kind, name, lambda: _registry(kind))


def _build_named(prefix: str, cls: type, values: dict[str, Any]) -> Any:
    """method/backbone: ``name`` plus free keyword params checked against the registry."""
    values = dict(values)
    extra_sync = {}
    if cls is BackboneConfig and "sync_bn" in values:
        extra_sync["sync_bn"] = check_value(f"{prefix}.sync_bn", values.pop("sync_bn"), bool, {}, False)
    if cls is BackboneConfig and "sync_bn_group" in values:
        extra_sync["sync_bn_group"] = check_value(
            f"{prefix}.sync_bn_group", values.pop("sync_bn_group"), int | None, {"gt": 0}, None
        )
    nested = values.pop("params", None) or {}
    name = values.pop("name", cls().name)
    params = {**nested, **values}
    choices = registry_names(prefix)
    if name not in choices:
        raise ConfigError(f"{prefix}.name", name, choice_hint(name, choices))
    _check_params(prefix, name, params, registry_params(prefix, name))
    if prefix == "method":
        return MethodConfig(name=name, params=params)
    return BackboneConfig(name=name, params=params, **extra_sync)


def _check_params(
    prefix: str, name: str, params: dict[str, Any], allowed: dict[str, signatures.Param]
) -> None:
    """Every key of ``params`` is a parameter of ``name`` with a value of its default's kind."""
    for key, value in params.items():
        if key not in allowed:
            if not allowed:
                raise ConfigError(
                    f"{prefix}.{key}", value, f"{name} takes no parameters; drop {prefix}.{key}"
                )
            suggestion = did_you_mean(f"{prefix}.{key}", [f"{prefix}.{k}" for k in allowed])
            if len(allowed) <= SHORT_LIST:
                listed = f"{name} takes: {', '.join(allowed)}"
            else:
                listed = f"(`rho config keys {prefix}.{name}` lists the {len(allowed)} parameters of {name})"
            raise ConfigError(f"{prefix}.{key}", value, f"unknown key; {suggestion}{listed}")
        default = allowed[key].default
        if isinstance(default, signatures.Unevaluated):  # not a literal in the source: import to see it
            default = _registry(prefix).params_of(name)[key]
        if default is not None and not _same_kind(value, default):
            raise ConfigError(
                f"{prefix}.{key}", value, f"a {type(default).__name__} like the default {default!r}"
            )


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _check_cross_fields(experiment: Experiment) -> None:
    """Rules that involve more than one key."""
    data = experiment.data
    if data.t_min is not None and data.t_max_mode != "gap":
        raise ConfigError(
            "data.t_min", data.t_min, "null unless data.t_max_mode is gap (it bounds the gap between clips)"
        )
    if data.t_min is not None and data.t_max is not None and data.t_min > data.t_max:
        raise ConfigError("data.t_min", data.t_min, f"at most data.t_max ({data.t_max})")
    if data.decode_device == "cuda" and data.decoder != "torchcodec":
        raise ConfigError("data.decode_device", "cuda", "cpu unless data.decoder is torchcodec (NVDEC)")
    if data.decode_device == "cuda" and (data.workers or data.cache):
        raise ConfigError(
            "data.decode_device",
            "cuda",
            "cpu with DataLoader workers or data.cache: NVDEC decodes in the training process "
            "(set data.workers=0 data.cache=false)",
        )
    optim = experiment.optim
    if optim.warmup_epochs >= optim.epochs and optim.warmup_epochs > 0:
        raise ConfigError(
            "optim.warmup_epochs",
            optim.warmup_epochs,
            f"fewer than optim.epochs ({optim.epochs}) so the cosine phase exists",
        )
    if optim.warmup_start_lr >= optim.lr and optim.warmup_epochs > 0:
        raise ConfigError(
            "optim.warmup_start_lr",
            optim.warmup_start_lr,
            f"less than optim.lr ({optim.lr}): the warmup ramps up to it",
        )


class DecoderUnavailable(RhoError, RuntimeError):
    """``data.decoder: torchcodec`` without torchcodec or the FFmpeg libraries it loads."""


TORCHCODEC_PIP = "pip install 'rho-harness[torchcodec]' (or: pip install torchcodec)"
TORCHCODEC_APT = (
    "apt-get install libavdevice59 libavfilter8 libavformat59 libavcodec59 libavutil57 libswscale6 "
    "libswresample4 (Debian 12; or any FFmpeg 4-8 shared libraries, e.g. the ffmpeg package)"
)


def torchcodec_problem(error: BaseException) -> str:
    """What to install, given the error that importing ``torchcodec.decoders`` raised."""
    if isinstance(error, ImportError) and (getattr(error, "name", None) or "").split(".")[0] == "torchcodec":
        return f"torchcodec is not installed: {TORCHCODEC_PIP}"
    return (
        f"torchcodec is installed but cannot load FFmpeg's shared libraries "
        f"({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}): {TORCHCODEC_APT}"
    )


def torchcodec_unavailable() -> str | None:
    """None when torchcodec decodes here, else what to install (``torchcodec_problem``)."""
    try:
        import torchcodec.decoders  # noqa: F401  (loads libtorchcodec and FFmpeg)
    except Exception as exc:  # ImportError, RuntimeError/OSError from the shared libraries
        return torchcodec_problem(exc)
    return None


def _check_decoder(data: DataConfig) -> None:
    """``data.decoder`` can decode on this machine (checked before a run starts): torchcodec
    loads, and a decoder from an entry point (``rho.decoders``) imports."""
    if data.decoder not in DECODERS:
        entry = plugins.plugins(DECODER_ENTRY_POINT_GROUP)[data.decoder]
        try:
            entry.load()
        except Exception as exc:  # whatever importing the plugin's module raises
            raise ConfigError(
                "data.decoder",
                data.decoder,
                f"a decoder that loads: its entry point {entry.value} raised {exc.__class__.__name__}: {exc}",
            ) from None
    if data.decoder == "torchcodec":
        problem = torchcodec_unavailable()
        if problem:
            raise ConfigError("data.decoder", "torchcodec", f"pyav, or install torchcodec: {problem}")
    if data.decode_device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("data.decode_device", "cuda", "cpu: no CUDA device is visible")


@dataclass(frozen=True)
class KeyInfo:
    """One config key as ``rho config keys`` and ``docs/reference/config.md`` list it."""

    key: str
    type: str
    default: str  # as YAML writes it; an expression's source text; "(required)"
    allowed: str
    help: str
    group: str = ""  # "" for the sections' own keys; "method.moco": a parameter of method moco


def type_name(hint: Any) -> str:
    """An annotation as written: ``int``, ``float | None``, ``list[float]``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(arg) for arg in args)}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def yaml_text(value: Any) -> str:
    """``value`` as YAML writes it in a flow (``null``, ``true``, ``[0.2, 1.0]``); an expression as written."""
    if isinstance(value, signatures.Unevaluated):
        return value.source
    if isinstance(value, tuple):
        value = json.loads(json.dumps(value, default=str))
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    except yaml.YAMLError:
        return repr(value)
    return text.removesuffix("...").strip()


def allowed_text(rules: typing.Mapping[str, Any]) -> str:
    """What a field's rules (``field_spec``) allow, in words."""
    parts = []
    if "choices" in rules:
        parts.append(f"one of {', '.join(str(choice) for choice in rules['choices'])}")
    if "registry" in rules:
        parts.append(f"one of {', '.join(registry_names(rules['registry'].rstrip('s')))}")
    bounds = [
        f"{sign} {rules[rule]}" for rule, sign in (("min", ">="), ("gt", ">"), ("max", "<=")) if rule in rules
    ]
    if bounds:
        parts.append(("each " if rules.get("length") else "") + " and ".join(bounds))
    if rules.get("length"):
        parts.insert(0, f"{rules['length']} numbers")
    if rules.get("pair01"):
        parts.append("[low, high] with 0 < low <= high <= 1")
    elif rules.get("pair"):
        parts.append("[low, high] with 0 < low <= high")
    if rules.get("file"):
        parts.append("an existing file (${VAR} expands)")
    if rules.get("files"):
        parts.append("existing files (${VAR} expands)")
    if rules.get("env") and not rules.get("file"):
        parts.append("${VAR} expands")
    return "; ".join(parts)


def section_keys() -> list[KeyInfo]:
    """Every key of the sections, from their dataclasses (method and backbone parameters aside)."""
    rows = []

    def walk(prefix: str, cls: type, instance: Any) -> None:
        for f in dataclasses.fields(cls):
            hint = type_hints(cls)[f.name]
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(hint):
                walk(f"{prefix}{f.name}.", hint, value)
                continue
            rows.append(
                KeyInfo(
                    f"{prefix}{f.name}",
                    type_name(hint),
                    yaml_text(value),
                    allowed_text(f.metadata),
                    f.metadata.get("help", ""),
                )
            )

    walk("", Experiment, Experiment())
    return rows


def param_keys(kind: str, name: str) -> list[KeyInfo]:
    """The parameters of method or backbone ``name`` as keys ``kind.PARAM`` (how a config writes them)."""
    rows = []
    for param in registry_params(kind, name).values():
        if param.annotation:
            type_text = param.annotation
        elif param.default is not None and not isinstance(param.default, signatures.Unevaluated):
            type_text = type(param.default).__name__
        else:
            type_text = ""
        default = "(required)" if param.required else yaml_text(param.default)
        allowed = "" if param.required or param.default is None else "a value of the default's kind"
        if isinstance(param.default, signatures.Unevaluated):
            allowed = "not settable from YAML unless its kind is (checked by importing the default)"
        help_text = param.help or f"passed to {param.owner.replace(':', '.')}"
        rows.append(KeyInfo(f"{kind}.{param.name}", type_text, default, allowed, help_text, f"{kind}.{name}"))
    return rows


def config_keys(prefix: str | None = None) -> list[KeyInfo]:
    """Every config key (``rho config keys``): the sections', then each method's and each backbone's
    parameters; with ``prefix`` those under it (``data``, ``data.augment``, ``method.moco``, ``method``)."""
    rows = section_keys()
    for kind in ("method", "backbone"):
        for name in registry_names(kind):
            rows += param_keys(kind, name)
    if not prefix:
        return rows

    def under(text: str) -> bool:
        return text == prefix or text.startswith(f"{prefix}.")

    return [row for row in rows if under(row.key) or (row.group and under(row.group))]


def describe(prefix: str | None = None) -> str:
    """A table of every key (or those under ``prefix``), its type, default, help and what is
    allowed, for ``rho config keys``; the parameters of each method and backbone under a heading."""
    lines, group = [], ""
    for row in config_keys(prefix):
        if row.group != group:
            group = row.group
            kind, _, name = group.partition(".")
            lines += [
                "",
                f"# {kind}.name: {name}; its parameters, set as {kind}.KEY (rho config keys {group})",
            ]
        allowed = f"  [{row.allowed}]" if row.allowed and not row.group else ""
        lines.append(f"{row.key:30} {row.type:16} {row.default:24} {row.help}{allowed}")
    return "\n".join(lines)
