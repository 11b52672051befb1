"""Does data loading keep up? The demo config pretrained by the real engine with its default workers.

``harness.train.pretrain`` runs ``studies/experiments/demo.yaml`` (as it is in the repository
at run time, with its ``data.workers``) for a few epochs without evaluation; the engine
measures, per epoch, the time the loop waits for the next batch (``data_wait``, a share of
wall time) and clips/s. Alongside, in the same run, it measures what a batch costs on each
side — decoding and augmenting one batch in one process, and one training step on a ready
batch — which is what decides whether a given number of cores can keep the step fed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

from harness.config import load_experiment
from harness.data.manifest import read_manifest
from harness.speed import Check, SpeedContext, SpeedResult
from harness.speed.environment import usable_cores
from harness.speed.media import QUICK_OVERRIDES, demo_data_root, rho_data
from harness.train import build_method, pretrain, train_dataset

TITLE = "data loading vs training step on the demo config with its default workers"
GOAL = "under 10% of step time spent waiting for data"
ORDER = 6
PARAMS = {
    "epochs": "epochs to train (default 4; quick 2)",
    "config": "experiment YAML (default the demo's)",
    "threads": "also train with these torch thread counts, e.g. 1 (comma-separated)",
}

DEMO = Path(__file__).resolve().parents[2] / "studies" / "experiments" / "demo.yaml"
QUICK = {**QUICK_OVERRIDES, "method.hidden_dims": [16], "method.out_dim": 8}


def batch_costs(experiment, batches: int = 2) -> tuple[float, float, float]:
    """Seconds, in one process, to decode one batch, to decode and augment it, and of one training step on it."""
    dataset = train_dataset(experiment)
    plain = train_dataset(experiment)
    plain.transform = None
    size = experiment.data.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    keys = [(99, i % len(dataset)) for i in range(batches * size)]
    started = time.perf_counter()
    for key in keys:
        plain[key]
    decode_only = (time.perf_counter() - started) / batches
    started = time.perf_counter()
    items = [dataset[key] for key in keys]
    decode = (time.perf_counter() - started) / batches
    torch.set_num_threads(threads)  # as in the training process
    batch = default_collate(items[:size])
    method = build_method(experiment)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    times = []
    for _ in range(4):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = method.training_step(batch)
        if not out.backward_done:
            out.loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return decode_only, decode, statistics.median(times[1:])


def run(ctx: SpeedContext) -> SpeedResult:
    epochs = ctx.param("epochs", 2 if ctx.quick else 4)
    config = Path(ctx.param("config", str(DEMO), str))
    default_threads = torch.get_num_threads()
    extra = ctx.param("threads", "", str)
    thread_counts = [default_threads] + [int(t) for t in extra.split(",") if t and int(t) != default_threads]
    root = demo_data_root(ctx.workdir.parent / "data", ctx.quick)
    result = ctx.result(["torch threads", "epoch", "clips/s", "data wait", "epoch s"])
    steady: dict[int, float] = {}
    with rho_data(root), tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        overrides = {
            **(QUICK if ctx.quick else {}),
            "optim.epochs": epochs,
            "eval.benchmarks": [],
            "eval.knn_monitor": False,
            "runtime.output_dir": f"{tmp}/checkpoints",
        }
        experiment = load_experiment(config, overrides)
        decode_only_s, decode_s, step_s = batch_costs(experiment)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            trained = pretrain(
                experiment,
                tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                output=Path(tmp) / f"threads{threads}",
                print_progress=False,
            )
            for record in trained.history:
                result.rows.append(
                    [
                        threads,
                        int(record["epoch"]),
                        record["clips_per_s"],
                        record["data_wait"],
                        record["epoch_time"],
                    ]
                )
            waits = [r["data_wait"] for r in trained.history[1:]] or [trained.history[0]["data_wait"]]
            steady[threads] = statistics.mean(waits)
    torch.set_num_threads(default_threads)
    data = experiment.data
    result.checks = [Check("data wait, epochs 2+", steady[default_threads], "<=", 0.10, unit="")]
    workers = data.workers
    cores = usable_cores()
    steps = len(read_manifest(data.train)) // data.batch_size
    result.notes = [
        f"{config.name} with data in {root}: ρ = {data.clips}, T x τ = {data.frames} x {data.stride}, crop "
        f"{data.crop}, batch {data.batch_size}, {workers} workers, {cores} cores; {epochs} epochs of {steps} "
        f"steps. The check is on the engine's default torch threads ({default_threads}) in the training "
        f"process; other thread counts (--param threads=1,...) are shown for comparison. Epoch 1 includes "
        f"starting the workers; later epochs' first batches were prefetched across the epoch end (one "
        f"loader iterator spans the training).",
        f"In this run, one batch costs {1000 * decode_s:.0f} ms to decode ({1000 * decode_only_s:.0f} ms) and "
        f"augment ({1000 * (decode_s - decode_only_s):.0f} ms) in one process and "
        f"{1000 * step_s:.0f} ms to train on ({default_threads} torch threads, no workers running): the "
        f"workers need {decode_s / step_s:.2f} core-seconds per second of training to keep up, on {cores} "
        f"cores shared with the training process.",
    ]
    if not result.checks[0].met:
        result.notes.append(
            f"What limits it: the training process and {workers} workers share {cores} cores. Decoding is "
            f"{decode_only_s / decode_s:.0%} of a batch's data cost (open, demux and H.264 decode of every "
            f"frame up to the last one needed, most of them never shown); per-clip augmentation the rest. The "
            f"step is short (a small 3D CNN on {data.crop} px clips), so when the workers run, the training "
            f"threads lose cores to them."
        )
    return result
