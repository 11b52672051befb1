"""The experiment configuration: one typed, validated ``Experiment`` loaded from YAML.

Sections: ``data``, ``backbone``, ``method``, ``optim``, ``eval``, ``runtime``. A YAML file
(read with the safe loader) gives any subset of the keys; dotted overrides
(``data.clips=3 method.temperature=0.2``) are applied on top; then every value is checked
before any compute starts. A bad value raises one ``ConfigError`` that names the key, the
value and what is allowed; unknown keys get a "did you mean" suggestion.

``method`` holds ``name`` plus the method's own keyword parameters, which are validated
against the method's constructor (``methods.params_of``); ``backbone`` likewise holds
``name`` plus keyword parameters for ``harness.backbones.build``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import RhoError

DATASETS = ("synthetic", "kinetics400", "kinetics600", "ucf101", "hmdb51", "ssv2", "custom")
OPTIMIZERS = ("sgd", "lars", "adamw")
LR_SCALING = ("linear", "sqrt", "none")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(RhoError, ValueError):
    """A configuration value or key that is not allowed; the message says which and why."""

    def __init__(self, key: str, value: Any, allowed: str, source: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key} = {value!r} is not allowed: {allowed}")


def expand_env(key: str, text: str) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text``; returns the result and the names referenced.

    Paths in configs and benchmarks use it so that one file serves every machine
    (``train: ${RHO_DATA}/kinetics400/train.csv``).

    Raises:
        ConfigError: for ``${VAR}`` with VAR unset or empty and no default.
    """
    names: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        names.append(name)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ConfigError(
            key,
            text,
            f"${{{name}}} to be set: export {name}=/path/to/the/folder, or give a default: ${{{name}:-folder}}",
        )

    return ENV_REFERENCE.sub(substitute, text), names


def field_spec(
    default: Any = dataclasses.MISSING, *, factory: Any = None, help: str = "", **rules: Any
) -> Any:
    """A dataclass field with a help text and validation rules (min, max, choices, ...)."""
    metadata = {"help": help, **rules}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


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
    t_max: float | None = field_spec(None, help="max seconds between clip starts (null: global)", min=0.0)
    crop: int = field_spec(224, help="output crop side in pixels", gt=0)
    short_side: int | None = field_spec(
        None, help="evaluation resize of the short side (null: crop*256/224)", gt=0
    )
    batch_size: int = field_spec(64, help="global batch size in videos", min=1)
    workers: int = field_spec(2, help="DataLoader worker processes", min=0)
    seek_threshold: float = field_spec(
        1.0, help="seek instead of decoding forward across gaps longer than this (s)", min=0.0
    )
    cache: bool = field_spec(
        False,
        help="decode each training video once and keep its frames in memory (small datasets; at most half the free RAM)",
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


@dataclass
class MethodConfig:
    """The SSL method: a name from ``methods.available()`` plus its keyword parameters."""

    name: str = field_spec("simclr", help="method name", registry="methods")
    params: dict[str, Any] = field_spec(factory=dict, help="the method's keyword parameters")


@dataclass
class OptimConfig:
    """Optimiser and schedule: linear warmup then half-cosine."""

    name: str = field_spec("sgd", help="optimiser", choices=OPTIMIZERS)
    lr: float = field_spec(0.6, help="base learning rate at base_batch_size", gt=0.0)
    base_batch_size: int = field_spec(256, help="the batch size that lr is given for", min=1)
    lr_scaling: str = field_spec(
        "linear", help="lr = base lr × (global batch / base_batch_size)^(1 or ½ or 0)", choices=LR_SCALING
    )
    weight_decay: float = field_spec(1e-6, help="weight decay (not on biases and norms)", min=0.0)
    momentum: float = field_spec(0.9, help="SGD/LARS momentum", min=0.0, max=1.0)
    nesterov: bool = field_spec(False, help="Nesterov momentum")
    trust: float = field_spec(0.001, help="LARS trust coefficient", gt=0.0)
    betas: list[float] = field_spec(factory=lambda: [0.9, 0.999], help="AdamW betas", pair01=True)
    epochs: int = field_spec(200, help="pretraining epochs", min=1)
    warmup_epochs: float = field_spec(35.0, help="linear warmup epochs (0 for none)", min=0.0)
    min_lr_ratio: float = field_spec(0.0, help="final lr as a fraction of the peak", min=0.0, max=1.0)
    clip_grad: float | None = field_spec(None, help="clip the gradient norm to this (null: off)", gt=0.0)


@dataclass
class EvalConfig:
    """Evaluation after pretraining and the online kNN monitor."""

    benchmarks: list[str] = field_spec(
        factory=list, help="benchmark YAML files to evaluate after pretraining", files=True
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
    EXECUTION_DATA_KEYS = ("workers", "val", "allow_outside_root", "cache")

    def training_hash(self) -> str:
        """Hash of everything that shapes the trained weights (not eval, logging or paths)."""
        d = self.to_dict()
        d.pop("eval")
        runtime = d.pop("runtime")
        d["seed"] = runtime["seed"]
        for key in self.EXECUTION_DATA_KEYS:
            d["data"].pop(key)
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
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "a path to an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", str(path), f"valid YAML; the parser says: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "config", str(path), "a YAML mapping with sections data, backbone, method, optim, eval, runtime"
        )
    return raw


def load_experiment(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    check_files: bool = True,
    base: dict[str, Any] | None = None,
) -> Experiment:
    """Load and validate an experiment: ``base`` dict, then the YAML file, then the overrides.

    Raises:
        ConfigError: the first invalid key or value, before anything is computed.
    """
    tree: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    source = str(path) if path is not None else None
    if path is not None:
        for key, value in flatten(read_yaml(path)).items():
            set_dotted(tree, key, value)
    items = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    for key, value in items.items():
        set_dotted(tree, key, value)
    try:
        return build_experiment(tree, check_files=check_files)
    except ConfigError as exc:
        if source and not str(exc).startswith(source):
            raise ConfigError(exc.key, exc.value, exc.allowed, source) from None
        raise


def load_experiment_text(text: str, source: str = "<text>", check_files: bool = False) -> Experiment:
    """An experiment from YAML text (e.g. the copy stored in a checkpoint or an MLflow run)."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", source, f"valid YAML; the parser says: {exc}") from None
    try:
        return build_experiment(tree, check_files=check_files)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.value, exc.allowed, source) from None


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
        else:
            sections[name] = _build_section(name, cls, value, check_files)
    experiment = Experiment(**sections)
    _check_cross_fields(experiment)
    return experiment


def all_keys() -> list[str]:
    """Every dotted key an experiment has (method/backbone params excluded)."""
    keys: list[str] = []

    def walk(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            t = _resolve(cls)[f.name]
            if dataclasses.is_dataclass(t):
                walk(f"{prefix}{f.name}.", t)
            elif f.name != "params":
                keys.append(f"{prefix}{f.name}")

    walk("", Experiment)
    return keys


def unknown_key_hint(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown key; {hint}known keys: {', '.join(choices)}"


def _resolve(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build_section(prefix: str, cls: type, values: dict[str, Any], check_files: bool) -> Any:
    hints = _resolve(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}"
        known = [f"{prefix}.{k}" for k in fields]
        raise ConfigError(key, values[unknown[0]], unknown_key_hint(key, [*known, *all_keys()]))
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if dataclasses.is_dataclass(hints[name]):
            sub = values.get(name) or {}
            if not isinstance(sub, dict):
                raise ConfigError(key, sub, f"a mapping of {name} settings")
            kwargs[name] = _build_section(key, hints[name], sub, check_files)
        elif name in values:
            kwargs[name] = check_value(key, values[name], hints[name], f.metadata, check_files)
        elif check_files and f.metadata.get("file") and f.default is not None:
            kwargs[name] = check_value(key, f.default, hints[name], f.metadata, check_files)
    return cls(**kwargs)


def _build_named(prefix: str, cls: type, values: dict[str, Any]) -> Any:
    """method/backbone: ``name`` plus free keyword params checked against the registry."""
    values = dict(values)
    extra_sync = {}
    if cls is BackboneConfig and "sync_bn" in values:
        extra_sync["sync_bn"] = check_value(f"{prefix}.sync_bn", values.pop("sync_bn"), bool, {}, False)
    nested = values.pop("params", None) or {}
    name = values.pop("name", cls().name)
    params = {**nested, **values}
    if prefix == "method":
        import methods

        choices = methods.available()
        if name not in choices:
            raise ConfigError("method.name", name, f"one of {', '.join(choices)}")
        allowed = methods.params_of(name)
        for key, value in params.items():
            if key not in allowed:
                raise ConfigError(
                    f"method.{key}",
                    value,
                    unknown_key_hint(key, list(allowed)).replace("known keys", f"{name} takes"),
                )
            default = allowed[key]
            if default is not None and not _same_kind(value, default):
                raise ConfigError(
                    f"method.{key}", value, f"a {type(default).__name__} like the default {default!r}"
                )
        return MethodConfig(name=name, params=params)
    from harness import backbones

    choices = backbones.available()
    if name not in choices:
        raise ConfigError("backbone.name", name, f"one of {', '.join(choices)}")
    return BackboneConfig(name=name, params=params, **extra_sync)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_value(key: str, value: Any, hint: Any, rules: dict[str, Any], check_files: bool) -> Any:
    """Coerce ``value`` to the annotated type and apply the field's rules."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
        origin = typing.get_origin(hint)
    help_text = rules.get("help", "")
    if value is None:
        if optional:
            return None
        raise ConfigError(key, value, f"a value is required ({help_text})")
    value = _coerce(key, value, hint, origin, help_text)
    if rules.get("file") or rules.get("env"):
        value = expand_env(key, value)[0]
    if rules.get("files"):
        value = [expand_env(key, item)[0] for item in value]
    _check_rules(key, value, rules, help_text)
    if check_files and rules.get("file") and not Path(value).is_file():
        raise ConfigError(key, value, f"an existing file ({help_text}); no file at {Path(value).resolve()}")
    if check_files and rules.get("files"):
        for item in value:
            if not Path(item).is_file():
                raise ConfigError(
                    key, item, f"existing files ({help_text}); no file at {Path(item).resolve()}"
                )
    return value


def _coerce(key: str, value: Any, hint: Any, origin: Any, help_text: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, f"true or false ({help_text})")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, value, f"an integer ({help_text})")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, value, f"a finite number ({help_text})") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, value, f"a finite number ({help_text})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, f"a string ({help_text})")
        return value
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"a list ({help_text})")
        return [
            _coerce(f"{key}[{i}]", v, item_type, typing.get_origin(item_type), help_text)
            for i, v in enumerate(value)
        ]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping ({help_text})")
        return dict(value)
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this module, not user input


def _check_rules(key: str, value: Any, rules: dict[str, Any], help_text: str) -> None:
    items = value if isinstance(value, list) else [value]
    if "choices" in rules and value not in rules["choices"]:
        close = difflib.get_close_matches(str(value), rules["choices"], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(key, value, f"{hint}one of {', '.join(rules['choices'])}")
    if "min" in rules and any(v < rules["min"] for v in items):
        raise ConfigError(key, value, f"must be >= {rules['min']} ({help_text})")
    if "max" in rules and any(v > rules["max"] for v in items):
        raise ConfigError(key, value, f"must be <= {rules['max']} ({help_text})")
    if "gt" in rules and any(v <= rules["gt"] for v in items):
        raise ConfigError(key, value, f"must be > {rules['gt']} ({help_text})")
    if "length" in rules and len(value) != rules["length"]:
        raise ConfigError(key, value, f"a list of {rules['length']} numbers ({help_text})")
    if rules.get("pair") or rules.get("pair01"):
        if len(value) != 2 or value[0] > value[1] or value[0] <= 0:
            raise ConfigError(key, value, f"[low, high] with 0 < low <= high ({help_text})")
        if rules.get("pair01") and value[1] > 1:
            raise ConfigError(key, value, f"[low, high] with 0 < low <= high <= 1 ({help_text})")


def _check_cross_fields(experiment: Experiment) -> None:
    """Rules that involve more than one key."""
    optim = experiment.optim
    if optim.warmup_epochs >= optim.epochs and optim.warmup_epochs > 0:
        raise ConfigError(
            "optim.warmup_epochs",
            optim.warmup_epochs,
            f"fewer than optim.epochs ({optim.epochs}) so the cosine phase exists",
        )


def describe() -> str:
    """A table of every key, its default and its help, for ``rho config keys``."""
    lines = []
    defaults = flatten(dataclasses.asdict(Experiment()))

    def walk(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            t = _resolve(cls)[f.name]
            if dataclasses.is_dataclass(t):
                walk(f"{prefix}{f.name}.", t)
                continue
            key = f"{prefix}{f.name}"
            rules = {k: v for k, v in f.metadata.items() if k in ("choices", "min", "max", "gt")}
            extra = f"  [{', '.join(f'{k}={v}' for k, v in rules.items())}]" if rules else ""
            lines.append(f"{key:28} {defaults.get(key, {})!r:24} {f.metadata.get('help', '')}{extra}")

    walk("", Experiment)
    return "\n".join(lines)
