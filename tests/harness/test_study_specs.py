"""The shipped study specs (``studies/**/*.yaml``): every one loads, validates and sweeps what it says.

Specs under ``studies/full/`` are the paper's sweeps on Kinetics-400; every other spec (the
demo, ``studies/cpu/``) must run on a CPU: the synthetic dataset and small backbones only.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from harness.config import Experiment
from harness.eval import load_benchmark
from harness.study import StudySpec, load_study

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"
SPECS = sorted(
    path for path in STUDIES.rglob("*.yaml") if "experiments" not in path.relative_to(STUDIES).parts
)
CPU_BACKBONES = {"r3d_tiny", "x3d_xs", "vit_tiny"}
METHODS = {"simclr", "swav", "moco", "byol"}


def _id(path: Path) -> str:
    return str(path.relative_to(STUDIES))


def _is_full(path: Path) -> bool:
    return "full" in path.relative_to(STUDIES).parts


@pytest.fixture(autouse=True)
def rho_data(tmp_path, monkeypatch) -> Path:
    """``${RHO_DATA}`` in the specs' manifests expands to a scratch folder (files are not checked)."""
    monkeypatch.setenv("RHO_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def load(path: Path) -> StudySpec:
    return load_study(path, check_files=False)


def experiments(spec: StudySpec) -> list[Experiment]:
    """Every fixed trial's experiment, and for a search each parameter at its bounds and choices."""
    runs = [spec.experiment(p.overrides, p.seed, check_files=False) for p in spec.points()]
    for param in spec.search:
        values = param.choices if param.type == "categorical" else (param.low, param.high)
        for value in values:
            value = int(value) if param.type == "int" else value
            runs.append(spec.experiment({param.key: value}, spec.seeds[0], check_files=False))
    return runs


def swept(spec: StudySpec, key: str) -> set:
    """The values ``key`` takes across the fixed trials (as their labels show it)."""
    return {p.label().get(key) for p in spec.points() if key in p.label()}


def test_specs_are_found():
    names = {_id(p) for p in SPECS}
    for sweep in ("clips", "timespan", "epochs", "backbones", "augment", "lr_search"):
        assert {f"cpu/{sweep}.yaml", f"full/{sweep}.yaml"} <= names, sweep
    assert "cpu/constant_nuisance.yaml" in names


@pytest.mark.parametrize("path", SPECS, ids=_id)
def test_spec_loads_with_description_objective_and_trials(path):
    spec = load(path)
    assert spec.description.strip(), "a description: what it measures, which figure, how long"
    assert spec.objective_metric.startswith("eval.") and spec.objective_metric.endswith(".top1")
    assert spec.direction == "maximize"
    assert spec.points() or spec.n_trials > 0


@pytest.mark.parametrize("path", SPECS, ids=_id)
def test_objective_is_produced_by_every_trials_benchmarks(path):
    """``eval.<name>.<protocol>.top1`` must come from a benchmark file that each trial evaluates."""
    spec = load(path)
    _, name, protocol, _ = spec.objective_metric.split(".")
    for experiment in experiments(spec):
        produced = set()
        for benchmark_path in experiment.eval.benchmarks:
            file = REPO / benchmark_path
            assert file.is_file(), f"{benchmark_path} (relative to the repository root)"
            benchmark = load_benchmark(file, check_files=False)
            produced.add((benchmark.name, benchmark.protocol))
        assert (name, protocol) in produced, (spec.objective_metric, experiment.eval.benchmarks)


@pytest.mark.parametrize("path", SPECS, ids=_id)
def test_scale_matches_the_folder(path):
    spec = load(path)
    for experiment in experiments(spec):
        if _is_full(path):
            assert experiment.data.dataset == "kinetics400"
            assert "kinetics400" in experiment.data.train
        else:
            assert experiment.data.dataset == "synthetic"
            assert experiment.backbone.name in CPU_BACKBONES, experiment.backbone.name


@pytest.mark.parametrize("path", SPECS, ids=_id)
def test_table_axes_are_swept_keys(path):
    spec = load(path)
    keys = set(spec.grid) | {p.key for p in spec.search}
    for point in spec.points():
        keys |= set(point.label())
    assert spec.table_rows in keys and spec.table_columns in keys, (spec.table_rows, spec.table_columns)


def test_study_names_are_unique():
    names = [load(path).name for path in SPECS]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_clips_sweep_covers_every_method_and_rho_with_both_bounds(scale):
    spec = load(STUDIES / scale / "clips.yaml")
    cells = {(e.method.name, e.data.clips) for e in experiments(spec)}
    assert set(itertools.product(METHODS, (1, 2, 3, 4))) <= cells
    bounds = {b["method"]["name"] for b in spec.baselines if isinstance(b.get("method"), dict)}
    assert {"random", "supervised"} <= bounds
    assert len(spec.seeds) >= (3 if scale == "cpu" else 1)  # findings need intervals: 3 seeds at CPU scale


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_timespan_sweep_runs_rho_byol_from_zero_to_global(scale):
    spec = load(STUDIES / scale / "timespan.yaml")
    t_max = swept(spec, "data.t_max")
    assert 0 in t_max and None in t_max and len(t_max) >= 5
    runs = experiments(spec)
    assert {e.data.clips for e in runs} == {2}
    assert "byol" in {e.method.name for e in runs}


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_lr_search_samples_the_learning_rate_and_prunes_on_the_knn_monitor(scale):
    spec = load(STUDIES / scale / "lr_search.yaml")
    assert spec.n_trials > 0 and spec.sampler == "tpe"
    lr = [p for p in spec.search if p.key == "optim.lr"]
    assert lr and lr[0].log
    assert spec.pruner in ("median", "hyperband") and spec.pruner_metric == "knn_top1"
    assert all(e.eval.knn_monitor for e in experiments(spec))


def test_full_base_experiment_is_the_papers_setting():
    spec = load(STUDIES / "full" / "timespan.yaml")
    base = spec.experiment({}, 0, check_files=False)
    assert base.backbone.name == "slow_r50" and not base.backbone.sync_bn  # per-GPU BN over 64 videos
    assert (base.data.frames, base.data.fps, base.data.stride, base.data.crop) == (8, 30, 9, 224)
    assert (base.optim.epochs, base.optim.warmup_epochs) == (200, 35)
    assert base.optim.name == "lars" and base.method.name == "byol"


def test_constant_nuisance_control_runs_on_its_own_data_with_the_same_views():
    spec = load(STUDIES / "cpu" / "constant_nuisance.yaml")
    cells = {(e.method.name, e.data.clips) for e in experiments(spec)}
    assert set(itertools.product(METHODS, (1, 2))) <= cells
    for experiment in experiments(spec):
        assert "synth_constant" in experiment.data.train and "synth_constant" in experiment.data.val
    for original, control in (("synth_linear", "synth_constant_linear"), ("synth_knn", "synth_constant_knn")):
        a = load_benchmark(REPO / "benchmarks" / f"{original}.yaml", check_files=False)
        b = load_benchmark(REPO / "benchmarks" / f"{control}.yaml", check_files=False)
        assert a.views == b.views and a.protocol == b.protocol
        assert "synth_constant" in str(b.train) and "synth_constant" in str(b.val) and a.name != b.name


def test_demo_long_is_the_demo_with_four_times_the_steps():
    demo, long = load(STUDIES / "demo.yaml"), load(STUDIES / "cpu" / "demo_long.yaml")
    assert (demo.grid, demo.per_method, demo.baselines, demo.seeds) == (
        long.grid,
        long.per_method,
        long.baselines,
        long.seeds,
    )
    short, longer = demo.points(), long.points()
    assert len(short) == len(longer) == 9
    for a, b in zip(short, longer, strict=True):
        ea, eb = (s.experiment(p.overrides, p.seed, check_files=False) for s, p in ((demo, a), (long, b)))
        assert eb.optim.epochs == 4 * ea.optim.epochs
        eb.optim.epochs = ea.optim.epochs
        assert ea.to_dict() == eb.to_dict()


def test_demo_seeds_is_the_demo_over_three_seeds():
    """studies/cpu/demo_seeds.yaml confirms the demo (issue 18): the same trials, seeds 0-2."""
    demo, seeds = load(STUDIES / "demo.yaml"), load(STUDIES / "cpu" / "demo_seeds.yaml")
    assert (demo.grid, demo.per_method) == (seeds.grid, seeds.per_method) and seeds.seeds == [0, 1, 2]
    assert demo.baselines == seeds.baselines == [{"method": {"name": "random"}}]
    configs = {p.key: seeds.experiment(p.overrides, p.seed, check_files=False) for p in seeds.points()}
    matched = 0
    for point in demo.points():
        if point.key in configs:
            demo_config = demo.experiment(point.overrides, point.seed, check_files=False)
            assert configs[point.key].to_dict() == demo_config.to_dict()
            matched += 1
    assert matched == len(demo.points()) == 9, "every demo trial runs in demo_seeds with seed 0"
