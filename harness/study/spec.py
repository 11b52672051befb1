"""Study specs (``studies/*.yaml``): what a study sweeps, validated before anything runs.

```yaml
name: demo                          # the Optuna study and the MLflow experiment
description: methods x rho on the synthetic dataset
experiment: experiments/demo.yaml   # the base experiment: a path (relative to this file) or a mapping
overrides: {optim.epochs: 8}        # dotted keys applied to the base
per_method:                         # dotted keys applied to the trials of one method (its own lr, say)
  moco: {optim.lr: 2.0e-3, optim.warmup_epochs: 10}
per_point:                          # dotted keys applied to the trials whose values match `when`
  - {when: {method.name: byol, data.clips: 4}, set: {optim.lr: 1.2}}
grid:                               # dotted key -> list of values; the full cross product
  method: [{name: simclr, temperature: 0.2}, {name: byol}]   # a whole section may be a value
  data.clips: [1, 2]
baselines:                          # extra points (each × every seed), e.g. the bounds
  - {method: {name: random}}
search:                             # Optuna-sampled trials, after the grid
  sampler: tpe                      # tpe | random
  n_trials: 20
  params:
    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    method.temperature: {type: categorical, choices: [0.1, 0.2]}
seeds: [0, 1]                       # each point × each seed is a trial
objective: {metric: eval.synth-linear.linear.top1, direction: maximize}
pruner: {type: asha, metric: knn_top1, min_resource: 2, reduction_factor: 3}   # type: none | median | hyperband | asha (successive halving; rungs at min_resource × reduction_factor^k epochs); metric: a per-epoch metric (knn_top1, loss, positive_accuracy, embedding_std), its direction inferred or given (direction:); per trial, each seed on its own
limits: {timeout: null, max_failures: null, max_retries: 2, heartbeat_interval: 10, grace_period: 60, device_hours: null}   # when workers stop taking trials: timeout (s per worker), max_failures, device_hours (a compute budget: the device-hours the study's trials logged, ``cost.device_seconds``); and the stale-trial retries
table: {rows: method.name, columns: data.clips}   # the comparison table printed at the end
```

A trial's config is the base, then ``per_method`` of its method, then every ``per_point`` rule
whose ``when`` values all equal the trial's (after the steps before; a key the trial does not
set never matches), in order; the trial's own values (grid, baseline, search) win over both.

Every point's experiment is built and validated (``harness.config``) when the spec loads,
so a bad value anywhere fails before the first trial; a ``per_point`` rule that matches none of
the grid's and baselines' trials (a misspelt key or value) is refused unless a search may match it.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import Experiment, flatten, load_experiment, read_yaml, set_dotted
from harness.resources import locate
from harness.schema import ConfigError, did_you_mean, unknown_key_hint

TOP_KEYS = (
    "name",
    "description",
    "experiment",
    "overrides",
    "per_method",
    "per_point",
    "grid",
    "baselines",
    "search",
    "seeds",
    "objective",
    "pruner",
    "limits",
    "table",
)
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "hyperband", "asha")
# The per-epoch metrics a pruner may watch (what the training loop logs after every epoch) and
# their direction (``pruner.direction`` overrides it): knn_top1 needs eval.knn_monitor: true;
# positive_accuracy is SimCLR's and MoCo's.
PRUNER_METRICS = {
    "knn_top1": "maximize",
    "loss": "minimize",
    "positive_accuracy": "maximize",
    "embedding_std": "maximize",
}
PRUNER_KEYS = (
    "type",
    "metric",
    "direction",
    "warmup_epochs",
    "min_resource",
    "reduction_factor",
    "min_early_stopping_rate",
)
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical")
LIMIT_DEFAULTS = {
    "timeout": None,
    "max_failures": None,
    "max_retries": 2,
    "heartbeat_interval": 10,
    "grace_period": 60,
    "device_hours": None,  # stop taking trials once the study's trials spent this many device-hours
}


@dataclass(frozen=True)
class SearchParam:
    """One Optuna distribution over a dotted config key."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()


@dataclass(frozen=True)
class Point:
    """One set of dotted overrides (a grid cell or a baseline) and a seed: one trial's identity."""

    overrides: dict[str, Any]
    seed: int

    @property
    def key(self) -> str:
        """A stable id: the same point and seed always give the same key (dedup, checkpoint folders)."""
        text = json.dumps({"overrides": self.overrides, "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def label(self) -> dict[str, Any]:
        """Flat, readable values (a section value shows as its ``name``)."""
        flat = {}
        for key, value in self.overrides.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{key}."))
            else:
                flat[key] = value
        return {**flat, "seed": self.seed}


@dataclass
class StudySpec:
    """A validated study."""

    name: str
    path: Path | None
    base: dict[str, Any]
    description: str = ""
    grid: dict[str, list] = field(default_factory=dict)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_point: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    search: list[SearchParam] = field(default_factory=list)
    sampler: str = "tpe"
    n_trials: int = 0
    objective_metric: str = "loss"
    direction: str = "minimize"
    pruner: str = "none"
    pruner_metric: str = "knn_top1"
    pruner_warmup: int = 1
    pruner_direction: str = "maximize"  # the pruner metric's own direction (loss: minimize)
    pruner_asha: dict[str, int] = field(default_factory=dict)  # asha: min_resource, reduction_factor, ...
    limits: dict[str, Any] = field(default_factory=lambda: dict(LIMIT_DEFAULTS))
    table_rows: str = "method.name"
    table_columns: str = "data.clips"

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """What the study's trials are: base config, per-method and per-point overrides, grid,
        baselines, seeds and search space, hashed.

        Leaves out what may differ between machines or runs without changing what is trained
        (runtime, eval, the manifests' paths, workers, the frame cache) and the search's trial
        budget (``n_trials`` may grow). Optuna fixes each swept key's choices when the study is
        created, so a grid or seed list cannot grow in place either. ``extra`` adds anything else
        the trials depend on (the demo: its dataset's format).
        """
        tree = copy.deepcopy(self.base)
        tree.pop("runtime", None)
        tree.pop("eval", None)
        for key in ("train", *Experiment.EXECUTION_DATA_KEYS):  # train: machines mount data differently
            (tree.get("data") or {}).pop(key, None)
        payload = {
            "base": tree,
            "per_method": self.per_method,
            "grid": self.grid,
            "baselines": self.baselines,
            "seeds": self.seeds,
            "search": [repr(param) for param in self.search],
            "extra": extra or {},
        }
        if self.per_point:  # only when given: specs without rules keep their fingerprints
            payload["per_point"] = self.per_point
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def points(self) -> list[Point]:
        """Grid cells × seeds, then baselines × seeds, in a fixed order."""
        cells = [
            dict(zip(self.grid, values, strict=True)) for values in itertools.product(*self.grid.values())
        ]
        if not self.grid:  # no grid: the base point alone, unless baselines or a search say what to run
            cells = [{}] if not self.search and not self.baselines else []
        cells += [dict(b) for b in self.baselines]
        return [Point(cell, seed) for cell in cells for seed in self.seeds]

    def trial_tree(self, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """One trial's config tree (without its seed) and the indices of the ``per_point`` rules it matched.

        The base, the trial's ``overrides``, its method's ``per_method`` keys, then each
        ``per_point`` rule in order whose ``when`` values all equal the tree's so far; a key the
        trial sets itself is never replaced.
        """
        tree = copy.deepcopy(self.base)
        for key, value in overrides.items():
            set_dotted(tree, key, copy.deepcopy(value))
        method = (tree.get("method") or {}).get("name")
        for key, value in self.per_method.get(method, {}).items():
            if key not in overrides:  # what a trial sweeps explicitly wins
                set_dotted(tree, key, copy.deepcopy(value))
        matched = []
        for index, rule in enumerate(self.per_point):
            flat = flatten(tree)
            if all(key in flat and flat[key] == value for key, value in rule["when"].items()):
                for key, value in rule["set"].items():
                    if key not in overrides:
                        set_dotted(tree, key, copy.deepcopy(value))
                matched.append(index)
        return tree, matched

    def experiment(self, overrides: dict[str, Any], seed: int, check_files: bool = True) -> Experiment:
        """The validated experiment of one trial."""
        tree, _ = self.trial_tree(overrides)
        set_dotted(tree, "runtime.seed", seed)
        source = str(self.path) if self.path else self.name
        try:
            return load_experiment(None, {}, check_files=check_files, base=tree)
        except ConfigError as exc:
            where = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in overrides.items()) or "the base"
            raise ConfigError(exc.key, exc.value, f"{exc.allowed} (in the trial {where})", source) from None


def _require(source: str, mapping: dict, key: str, prefix: str, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        bad = f"{prefix}{unknown[0]}"
        raise ConfigError(
            bad, mapping[unknown[0]], unknown_key_hint(bad, [prefix + k for k in allowed]), source
        )


def load_study(path: str | Path, check_files: bool = True) -> StudySpec:
    """Read and validate a study spec; every trial's experiment is validated too.

    Raises:
        ConfigError: naming the spec file, the key, the value and what is allowed.
    """
    path = locate(path)
    raw = read_yaml(path)
    return parse_study(raw, path, check_files=check_files)


def parse_study(raw: dict[str, Any], path: Path | None = None, check_files: bool = True) -> StudySpec:
    """Validate a spec given as a mapping (``path`` resolves a relative ``experiment``)."""
    source = str(path) if path else "<study>"
    _require(source, raw, "", "", TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\ "):
        raise ConfigError("name", name, "a non-empty name without spaces or slashes", source)
    base = _base_tree(source, raw.get("experiment"), path)
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("overrides", overrides, "a mapping of dotted keys to values", source)
    for key, value in overrides.items():
        set_dotted(base, key, value)
    spec = StudySpec(name=name, path=path, base=base, description=str(raw.get("description") or ""))
    per_method = raw.get("per_method") or {}
    if not isinstance(per_method, dict) or not all(isinstance(v, dict) for v in per_method.values()):
        raise ConfigError("per_method", per_method, "a mapping of method name to dotted overrides", source)
    spec.per_method = per_method
    spec.per_point = _parse_per_point(source, raw.get("per_point"))

    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError("grid", grid, "a mapping of dotted keys to lists of values", source)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", values, "a non-empty list of values", source)
    spec.grid = dict(grid)
    baselines = raw.get("baselines") or []
    if not isinstance(baselines, list) or not all(isinstance(b, dict) and b for b in baselines):
        raise ConfigError(
            "baselines", baselines, "a list of non-empty mappings of dotted keys to values", source
        )
    spec.baselines = baselines
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError("seeds", seeds, "a non-empty list of integers >= 0", source)
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", seeds, "distinct seeds", source)
    spec.seeds = seeds
    _parse_search(source, raw.get("search"), spec)
    _parse_objective(source, raw.get("objective"), spec)
    _parse_pruner(source, raw.get("pruner"), spec)
    _parse_limits(source, raw.get("limits"), spec)
    table = raw.get("table") or {}
    _require(source, table, "table", "table.", ("rows", "columns"))
    spec.table_rows = table.get("rows", spec.table_rows)
    spec.table_columns = table.get("columns", spec.table_columns)
    if not spec.points() and not spec.search:
        raise ConfigError("grid", grid, "at least one trial: give grid values, baselines or a search", source)
    for point in spec.points():  # every trial's config is valid before the first one runs
        spec.experiment(point.overrides, point.seed, check_files=check_files)
    _check_rules_match(source, spec)
    return spec


def _parse_per_point(source: str, rules: Any) -> list[dict[str, dict[str, Any]]]:
    if rules is None:
        return []
    shape = "a list of {when: {dotted key: value}, set: {dotted key: value}}"
    if not isinstance(rules, list):
        raise ConfigError("per_point", rules, shape, source)
    for index, rule in enumerate(rules):
        where = f"per_point[{index}]"
        if not isinstance(rule, dict):
            raise ConfigError(where, rule, shape, source)
        _require(source, rule, where, f"{where}.", ("when", "set"))
        for part in ("when", "set"):
            if not isinstance(rule.get(part), dict) or not rule[part]:
                raise ConfigError(
                    f"{where}.{part}", rule.get(part), "a non-empty mapping of dotted keys", source
                )
    return [{"when": dict(rule["when"]), "set": dict(rule["set"])} for rule in rules]


def _check_rules_match(source: str, spec: StudySpec) -> None:
    """Refuse a ``per_point`` rule that no grid or baseline trial matches (a search may still match it)."""
    if spec.search or not spec.per_point:
        return
    used = {index for point in spec.points() for index in spec.trial_tree(point.overrides)[1]}
    for index, rule in enumerate(spec.per_point):
        if index not in used:
            raise ConfigError(
                f"per_point[{index}].when",
                rule["when"],
                "values that some trial of the grid or baselines has",
                source,
            )


def _base_tree(source: str, experiment: Any, path: Path | None) -> dict[str, Any]:
    if experiment is None:
        return {}
    if isinstance(experiment, dict):
        return copy.deepcopy(experiment)
    if isinstance(experiment, str):
        candidate = Path(experiment)
        if not candidate.is_absolute() and path is not None and locate(path.parent / candidate).is_file():
            candidate = locate(path.parent / candidate)  # beside the spec, or its shipped copy
        if not candidate.is_file():
            raise ConfigError(
                "experiment",
                experiment,
                "an experiment YAML path (relative to the spec) or a mapping",
                source,
            )
        tree: dict[str, Any] = {}
        for key, value in flatten(read_yaml(candidate)).items():
            set_dotted(tree, key, value)
        return tree
    raise ConfigError("experiment", experiment, "an experiment YAML path or a mapping", source)


def _parse_search(source: str, search: Any, spec: StudySpec) -> None:
    if search is None:
        return
    if not isinstance(search, dict):
        raise ConfigError("search", search, "a mapping with sampler, n_trials and params", source)
    _require(source, search, "search", "search.", ("sampler", "n_trials", "params"))
    spec.sampler = search.get("sampler", "tpe")
    if spec.sampler not in SAMPLERS:
        raise ConfigError("search.sampler", spec.sampler, f"one of {', '.join(SAMPLERS)}", source)
    spec.n_trials = search.get("n_trials", 0)
    if not isinstance(spec.n_trials, int) or spec.n_trials < 1:
        raise ConfigError("search.n_trials", spec.n_trials, "an integer >= 1", source)
    params = search.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError("search.params", params, "a mapping of dotted keys to distributions", source)
    for key, dist in params.items():
        where = f"search.params.{key}"
        if not isinstance(dist, dict):
            raise ConfigError(
                where, dist, "a mapping like {type: float, low: 0.001, high: 0.1, log: true}", source
            )
        _require(source, dist, where, f"{where}.", ("type", "low", "high", "log", "step", "choices"))
        kind = dist.get("type")
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{where}.type", kind, f"one of {', '.join(PARAM_TYPES)}", source)
        if kind == "categorical":
            choices = dist.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}.choices", choices, "a non-empty list", source)
            spec.search.append(SearchParam(key, kind, choices=tuple(choices)))
            continue
        low, high = _number(dist.get("low")), _number(dist.get("high"))
        if low is None or high is None or low >= high:
            raise ConfigError(where, dist, "numbers low < high", source)
        if dist.get("log") and low <= 0:
            raise ConfigError(f"{where}.low", low, "> 0 for a log distribution", source)
        spec.search.append(
            SearchParam(key, kind, low, high, bool(dist.get("log")), _number(dist.get("step")))
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value if isinstance(value, (int, float)) else None


def _parse_objective(source: str, objective: Any, spec: StudySpec) -> None:
    objective = objective or {}
    if not isinstance(objective, dict):
        raise ConfigError(
            "objective", objective, "a mapping {metric: ..., direction: maximize|minimize}", source
        )
    _require(source, objective, "objective", "objective.", ("metric", "direction"))
    spec.objective_metric = objective.get("metric", "loss")
    spec.direction = objective.get("direction", "minimize" if spec.objective_metric == "loss" else "maximize")
    if spec.direction not in DIRECTIONS:
        raise ConfigError("objective.direction", spec.direction, "maximize or minimize", source)


def _parse_pruner(source: str, pruner: Any, spec: StudySpec) -> None:
    pruner = pruner or {}
    if isinstance(pruner, str):
        pruner = {"type": pruner}
    if not isinstance(pruner, dict):
        raise ConfigError("pruner", pruner, "a mapping {type: ..., metric: ...} or a pruner type", source)
    _require(source, pruner, "pruner", "pruner.", PRUNER_KEYS)
    spec.pruner = pruner.get("type", "none")
    if spec.pruner not in PRUNERS:
        raise ConfigError("pruner.type", spec.pruner, f"one of {', '.join(PRUNERS)}", source)
    spec.pruner_metric = pruner.get("metric", "knn_top1")
    if not isinstance(spec.pruner_metric, str) or not spec.pruner_metric:
        raise ConfigError("pruner.metric", spec.pruner_metric, "a metric logged after every epoch", source)
    known = PRUNER_METRICS.get(spec.pruner_metric)
    if known is None and "direction" not in pruner and did_you_mean(spec.pruner_metric, PRUNER_METRICS):
        # close to a known name but not it: a typo would never prune (the metric never arrives)
        raise ConfigError(
            "pruner.metric",
            spec.pruner_metric,
            f"{did_you_mean(spec.pruner_metric, PRUNER_METRICS)}a metric logged after every epoch "
            f"({', '.join(PRUNER_METRICS)}, lr, or a method's own; another name needs pruner.direction)",
            source,
        )
    # Any metric the epoch logs may be watched (lr, a method's own); the known ones carry their
    # direction, another takes the objective's unless pruner.direction says.
    spec.pruner_direction = pruner.get("direction", known or spec.direction)
    if spec.pruner_direction not in DIRECTIONS:
        raise ConfigError("pruner.direction", spec.pruner_direction, "maximize or minimize", source)
    spec.pruner_warmup = _count_key(source, pruner, "warmup_epochs", 1, 0)
    if spec.pruner == "asha":
        spec.pruner_asha = {
            "min_resource": _count_key(source, pruner, "min_resource", max(1, spec.pruner_warmup), 1),
            "reduction_factor": _count_key(source, pruner, "reduction_factor", 3, 2),
            "min_early_stopping_rate": _count_key(source, pruner, "min_early_stopping_rate", 0, 0),
        }
    else:
        extra = [
            key for key in ("min_resource", "reduction_factor", "min_early_stopping_rate") if key in pruner
        ]
        if extra:
            raise ConfigError(
                f"pruner.{extra[0]}", pruner[extra[0]], "a key of pruner.type: asha only", source
            )
    if (
        spec.pruner != "none"
        and not spec.base.get("eval", {}).get("knn_monitor")
        and spec.pruner_metric == "knn_top1"
    ):
        raise ConfigError(
            "pruner.metric",
            spec.pruner_metric,
            "a per-epoch metric; knn_top1 needs eval.knn_monitor: true",
            source,
        )


def _count_key(source: str, mapping: dict, key: str, default: int, low: int) -> int:
    """``mapping[key]`` (else ``default``): an integer >= ``low`` (epochs or a factor)."""
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"pruner.{key}", value, f"an integer >= {low}", source)
    return value


def _parse_limits(source: str, limits: Any, spec: StudySpec) -> None:
    limits = limits or {}
    _require(source, limits, "limits", "limits.", tuple(LIMIT_DEFAULTS))
    merged = {**LIMIT_DEFAULTS, **limits}
    for key, value in merged.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ConfigError(f"limits.{key}", value, "a number >= 0 or null", source)
    spec.limits = merged


def dump_point(overrides: dict[str, Any]) -> str:
    """A point's overrides as canonical JSON (stored on the Optuna trial)."""
    return json.dumps(overrides, sort_keys=True, default=str)
