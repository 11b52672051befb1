"""A real small study for the report and browser tests: ρSimCLR and ρBYOL × ρ ∈ {1, 2} × seeds {0, 1}
plus the random-init baseline (10 trials), run once per test session by the study runner into a real
MLflow sqlite store and Optuna storage."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from tiny_data import tiny_experiment_tree, write_tiny_knn_benchmark

NAME = "report-small"
METRIC = "eval.tiny-knn.knn.top1"


@dataclass(frozen=True)
class SmallStudy:
    spec: Path
    storage: str
    tracking_uri: str
    root: Path


def build_small_study(root: Path, tiny_synth: dict[str, Path], mlflow_template: Path) -> SmallStudy:
    """Run the study under ``root`` unless an earlier test of this session already did (the report and
    browser tests share it: pass the same ``root``, e.g. under ``tmp_path_factory.getbasetemp()``)."""
    from harness.study import load_study, prepare_study, run_worker

    db = root / "mlflow.db"
    study = SmallStudy(root / f"{NAME}.yaml", f"sqlite:///{root}/optuna.db", f"sqlite:///{db}", root)
    if (root / "done").is_file():
        return study
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template, db)
    benchmark = write_tiny_knn_benchmark(tiny_synth, root)
    tree = tiny_experiment_tree(tiny_synth, root)
    tree["eval"] = {"benchmarks": [str(benchmark)]}
    spec = {
        "name": NAME,
        "description": "report test: two methods x two rho x two seeds, random-init baseline",
        "experiment": tree,
        "grid": {
            "method": [
                {"name": "simclr", "temperature": 0.2, "hidden_dims": [16], "out_dim": 8},
                {"name": "byol", "projector_hidden_dims": [16], "predictor_hidden_dims": [16], "out_dim": 8},
            ],
            "data.clips": [1, 2],
        },
        "baselines": [{"method": {"name": "random"}}],
        "seeds": [0, 1],
        "objective": {"metric": METRIC, "direction": "maximize"},
        "table": {"rows": "method.name", "columns": "data.clips"},
    }
    study.spec.write_text(yaml.safe_dump(spec))
    loaded = load_study(study.spec)
    prepare_study(loaded, study.storage, study.tracking_uri)
    here = Path.cwd()
    os.chdir(root)  # the evaluation's feature cache (./mlruns/features) goes under root
    try:
        report = run_worker(loaded, study.storage, study.tracking_uri, quiet=True)
    finally:
        os.chdir(here)
    assert report.completed == 10 and report.failed == 0, report
    (root / "done").touch()
    return study
