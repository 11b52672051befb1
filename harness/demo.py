"""``make demo`` / ``rho demo``: the quick start on embedded defaults.

Synthesises the demo dataset (cached in data/synth), runs the study ``studies/demo.yaml``
(ρSimCLR, ρSwAV, ρMoCo, ρBYOL × ρ ∈ {1, 2} on ``r3d_tiny``, plus the random-init
baseline) into the embedded stores under ./mlruns, prints the comparison
tables and writes the study's report (reports/<study>/report.html). Re-running it resumes
the study: finished trials are kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pandas as pd

from harness.data.synth import SynthSpec, dataset_stamp, synthesize
from harness.report import write_report
from harness.resources import shipped
from harness.study import (
    StudyChangedError,
    comparison_table,
    delete_study,
    load_study,
    prepare_study,
    resolve_storage,
    run_worker,
    trials_frame,
)
from harness.tracking import resolve_tracking_uri

DEMO_STUDY = shipped("studies/demo.yaml")
DATA = Path("data/synth")
METRICS = {
    "eval.synth-linear.linear.top1": "linear probe top-1 (%)",
    "eval.synth-knn.knn.top1": "kNN top-1 (%)",
}


def run_demo(spec_path: Path = DEMO_STUDY) -> int:
    """Run the demo study and print its tables; returns the exit status."""
    started = time.monotonic()
    print(f"[1/3] synthetic dataset in {DATA} (cached after the first run)", flush=True)
    data_spec = SynthSpec()
    synthesize(DATA, data_spec, workers=2)
    spec = load_study(spec_path)
    storage_url, tracking_uri = resolve_storage(None), resolve_tracking_uri(None)
    # Trials on another synthetic dataset (an older format, or other defaults) are stale too.
    data_format = {"synth": dataset_stamp(data_spec)}
    try:
        added, _ = prepare_study(spec, storage_url, tracking_uri, extra=data_format, strict=True)
    except StudyChangedError:
        trials, _ = delete_study(spec, storage_url)
        print(
            f"      the demo changed since its last run here: its {trials} old trials are deleted and it "
            "starts over (their MLflow runs stay)",
            flush=True,
        )
        added, _ = prepare_study(spec, storage_url, tracking_uri, extra=data_format)
    total = len(spec.points())
    print(
        f"[2/3] study {spec.name}: {total} trials ({total - added} already done), one MLflow run each",
        flush=True,
    )
    run_worker(spec, storage_url, tracking_uri)
    frame = trials_frame(optuna.load_study(study_name=spec.name, storage=storage_url))
    print(
        f"\n[3/3] results on the synthetic validation set (chance {100 / data_spec.classes:.1f}%), "
        f"mean over seeds {spec.seeds}:"
    )
    for metric, title in METRICS.items():
        table = comparison_table(frame, spec.table_rows, spec.table_columns, metric)
        if not table.empty:
            with pd.option_context("display.width", 200):
                print(
                    f"\n{title}; rows {spec.table_rows}, columns ρ ({spec.table_columns})\n{table.to_string()}"
                )
    failed = frame[frame["state"] == "FAIL"] if not frame.empty else frame
    for _, row in failed.iterrows():
        print(f"trial {row['trial']} failed: {row['failure_reason']}")
    report = write_report(tracking_uri, spec.name)
    print(f"\nreport (tables, plots, training curves): {report.out / 'report.html'}")
    print(f"done in {time.monotonic() - started:.0f} s. Review every run in the MLflow UI: rho ui")
    print(f"Trial table: rho study status {spec.name}; Optuna view: rho dashboard {spec.name}")
    return 0 if failed.empty else 1
