"""``make demo`` / ``rho demo``: the quick start on embedded defaults.

Synthesises the demo dataset (cached in data/synth), pretrains ρBYOL with ρ = 2 on
``r3d_tiny`` for a few epochs, evaluates it with a linear probe and kNN, does the same for
the random-init baseline, prints both side by side, and says how to open the MLflow UI.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.config import load_experiment
from harness.data.synth import SynthSpec, synthesize

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "studies" / "experiments" / "demo.yaml"
DATA = Path("data/synth")
BENCHMARKS = ["benchmarks/synth_linear.yaml", "benchmarks/synth_knn.yaml"]


def run_demo(fast: bool = False) -> int:
    """Run the demo; ``fast`` shrinks it to a smoke test. Returns the exit status."""
    from harness.train import pretrain

    started = time.monotonic()
    spec = SynthSpec(train_videos=64, val_videos=32, duration=2.0) if fast else SynthSpec()
    print(
        f"[1/3] synthetic dataset in {DATA} ({spec.train_videos} train / {spec.val_videos} val videos)",
        flush=True,
    )
    synthesize(DATA, spec, workers=2)
    benchmarks = [str(Path(__file__).resolve().parents[1] / b) for b in BENCHMARKS]
    overrides = {"eval.benchmarks": benchmarks}
    if fast:
        overrides.update({"optim.epochs": 2, "optim.warmup_epochs": 0, "data.batch_size": 16})
    rows = []
    for label, method in (("rho-BYOL rho=2", {"name": "byol"}), ("random init", {"name": "random"})):
        print(f"[{2 if method['name'] == 'byol' else 3}/3] {label}", flush=True)
        experiment = load_experiment(DEMO_CONFIG, {**overrides, "method": method})
        result = pretrain(experiment, resume=True, run_name=f"demo-{method['name']}")
        rows.append((label, result.metrics))
    print("\nresults (top-1 %, synthetic val):")
    keys = sorted({k for _, m in rows for k in m if k.endswith(".top1")})
    print(f"  {'':18}" + "".join(f"{k.split('.')[1] + ' ' + k.split('.')[2]:>22}" for k in keys))
    for label, metrics in rows:
        print(f"  {label:18}" + "".join(f"{metrics.get(k, float('nan')):>22.1f}" for k in keys))
    print(f"\ndone in {time.monotonic() - started:.0f} s. Review the runs: rho ui  (MLflow UI on 127.0.0.1)")
    return 0
