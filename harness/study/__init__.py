"""Studies: specs (``studies/*.yaml``), their Optuna backend, trial queue, lifecycle, workers and
launched processes, and result tables."""

from harness.study.backend import make_storage, open_study, resolve_storage
from harness.study.launch import run_workers, torchrun_pruning_callback, worker_command
from harness.study.lifecycle import StudyChangedError, delete_study, ensure_parent_run, prepare_study
from harness.study.queue import enqueue_points
from harness.study.spec import Point, StudySpec, load_study, parse_study
from harness.study.tables import comparison_table, trials_frame
from harness.study.worker import WorkerReport, run_worker

__all__ = [
    "Point",
    "StudyChangedError",
    "StudySpec",
    "WorkerReport",
    "comparison_table",
    "delete_study",
    "enqueue_points",
    "ensure_parent_run",
    "load_study",
    "make_storage",
    "open_study",
    "parse_study",
    "prepare_study",
    "resolve_storage",
    "run_worker",
    "run_workers",
    "torchrun_pruning_callback",
    "trials_frame",
    "worker_command",
]
