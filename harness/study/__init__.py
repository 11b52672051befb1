"""Studies: specs (``studies/*.yaml``), the Optuna/MLflow runner and result tables."""

from harness.study.runner import (
    DEFAULT_STORAGE,
    enqueue_points,
    ensure_parent_run,
    make_storage,
    open_study,
    prepare_study,
    run_worker,
)
from harness.study.spec import Point, StudySpec, load_study, parse_study
from harness.study.tables import comparison_table, trials_frame

__all__ = [
    "DEFAULT_STORAGE",
    "Point",
    "StudySpec",
    "comparison_table",
    "enqueue_points",
    "ensure_parent_run",
    "load_study",
    "make_storage",
    "open_study",
    "parse_study",
    "prepare_study",
    "run_worker",
    "trials_frame",
]
