"""Does data loading keep up? The demo config pretrained by the real engine with its default workers.

``harness.train.pretrain`` runs ``studies/experiments/demo.yaml`` (as it is in the repository
at run time, with its ``data.workers``) for a few epochs without evaluation; the engine
measures, per epoch, the time the loop waits for the next batch (``data_wait``, a share of
wall time) and clips/s. Alongside, in the same run, it measures what a batch costs on each
side — decoding and augmenting one batch in one process, and one training step on a ready
batch — which is what decides whether a given number of cores can keep the step fed.

Then the matrix of issue 19: data wait at ρ = 4 on Kinetics-like files (10 s, 340x256, x264
defaults) and on the demo config, with 2 workers per core, for each decoder backend that
``data.decoder`` offers (one whose backend is not installed is skipped with a note) and each
augmentation placement (``data.augment.placement``: worker, or device: the workers only decode
and the training process augments each batch, which the engine counts as data wait).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

from harness.config import AUGMENT_PLACEMENTS, DataConfig, load_experiment
from harness.data.manifest import read_manifest, write_manifest
from harness.speed import Check, SpeedContext, SpeedResult
from harness.speed.environment import usable_cores
from harness.speed.media import QUICK_OVERRIDES, demo_data_root, rho_data, textured_videos
from harness.train import build_method, pretrain, train_dataset

TITLE = "data loading vs training step: the demo config, and ρ = 4 per decoder and augmentation placement"
GOAL = (
    "under 10% of step time spent waiting for data on the demo config and at ρ = 4 on Kinetics-like "
    "files with 2 workers per core"
)
ORDER = 6
PARAMS = {
    "epochs": "epochs to train (default 4; quick 2)",
    "config": "experiment YAML (default the demo's)",
    "threads": "also train with these torch thread counts, e.g. 1 (comma-separated)",
    "matrix": "1: also the ρ = 4 matrix of decoders x placements (default 1); 0: the demo config only",
    "videos": "Kinetics-like videos in the matrix (default 24; quick 4)",
    "decoders": "decoder backends of the matrix (default: every choice of data.decoder), comma-separated",
}

PROFILE_HINT_WAIT = 0.20  # data wait (share of step time) above which the results point to `rho data profile`
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


def decoder_choices() -> tuple[str, ...]:
    """The values ``data.decoder`` takes (just PyAV where the key does not exist)."""
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    return tuple(fields["decoder"].metadata.get("choices", ("pyav",))) if "decoder" in fields else ("pyav",)


def steady_wait(history: list[dict]) -> float:
    """Mean data wait of epochs 2+ (epoch 1 alone when there is one)."""
    waits = [r["data_wait"] for r in history[1:]] or [history[0]["data_wait"]]
    return statistics.mean(waits)


def matrix(ctx: SpeedContext, config: Path, root: Path, tmp: str, epochs: int) -> tuple[list, list, list]:
    """Data wait at ρ = 4 on Kinetics-like files and on the demo data, 2 workers per core, for each
    decoder and placement: rows, checks and notes."""
    quick = ctx.quick
    workers = 2 * usable_cores()
    videos = ctx.param("videos", 4 if quick else 24)
    kinetics = textured_videos(ctx.workdir / "kinetics", videos, 2.0 if quick else 10.0, 30, 340, 256)
    manifest = write_manifest(  # beside the videos' folder: under the manifest's data root
        ctx.workdir / "kinetics" / "loading.csv", [{"path": str(e.path), "label": e.label} for e in kinetics]
    )
    choices = decoder_choices()
    wanted = ctx.param("decoders", ",".join(choices), str)
    common = {
        **(QUICK if quick else {}),
        "optim.epochs": epochs,
        "eval.benchmarks": [],
        "eval.knn_monitor": False,
        "runtime.output_dir": f"{tmp}/checkpoints",
        "data.clips": 4,
        "data.workers": workers,
    }
    files = {
        "Kinetics-like": {
            "data.train": str(manifest),
            "data.val": None,
            "data.cache": False,
            "data.t_max": None,
            "data.batch_size": 4 if quick else 8,
            "optim.base_batch_size": 4 if quick else 8,
            **({} if quick else {"data.frames": 8, "data.stride": 4, "data.crop": 112}),
        },
        "demo": {"data.cache": False},
    }
    rows, checks, notes = [], [], []
    for label, overrides in files.items():
        for decoder in [d for d in wanted.split(",") if d]:
            for placement in AUGMENT_PLACEMENTS:
                keys = {**common, **overrides, "data.augment.placement": placement}
                if "decoder" in {f.name for f in dataclasses.fields(DataConfig)}:
                    keys["data.decoder"] = decoder
                elif decoder != "pyav":
                    notes.append(f"{label}, {decoder}: skipped, data.decoder does not exist in this version")
                    continue
                try:
                    experiment = load_experiment(config, keys)
                    trained = pretrain(
                        experiment,
                        tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                        output=Path(tmp) / f"{label}-{decoder}-{placement}",
                        print_progress=False,
                    )
                except Exception as exc:  # a backend that is not installed, or fails: noted, the rest runs
                    notes.append(f"{label}, {decoder}, {placement}: skipped, {type(exc).__name__}: {exc}")
                    continue
                last = trained.history[-1]
                wait = steady_wait(trained.history)
                rows.append([label, 4, decoder, placement, workers, last["clips_per_s"], wait])
                checks.append(
                    Check(f"data wait, {label} ρ=4 {decoder} {placement}", wait, "<=", 0.10, unit="")
                )
    notes.append(
        f"Matrix: ρ = 4, {workers} workers (2 per core), {epochs} epochs, data wait the mean of epochs 2+; "
        f"Kinetics-like: {videos} textured H.264 videos ({'2' if quick else '10'} s, 30 fps, 340x256, x264 "
        f"defaults), global clip sampling, "
        + ("the quick sizes" if quick else "T x τ = 8 x 4, crop 112, batch 8")
        + "; demo: the demo config at ρ = 4 without its frame cache (each clip decoded). The model is the "
        "config's (r3d_tiny on the CPU); the device placement augments on the CPU here, in the training "
        "process, counted as data wait."
    )
    if not torch.cuda.is_available() and any(r[3] == "device" for r in rows):
        notes.append(
            "Without a GPU the device placement augments on the CPU in the training process, one batch "
            "after another between steps: that time is data wait by construction (the workers' share "
            "shrinks, the training process's grows). It is meant for a GPU, where the batch's augmentation "
            "is a few kernels beside the step (benchmarks/speed/gpu.py)."
        )
    return rows, checks, notes


def run(ctx: SpeedContext) -> SpeedResult:
    epochs = ctx.param("epochs", 2 if ctx.quick else 4)
    config = Path(ctx.param("config", str(DEMO), str))
    default_threads = torch.get_num_threads()
    extra = ctx.param("threads", "", str)
    thread_counts = [default_threads] + [int(t) for t in extra.split(",") if t and int(t) != default_threads]
    root = demo_data_root(ctx.workdir.parent / "data", ctx.quick)
    result = ctx.result(["torch threads", "epoch", "clips/s", "data wait", "epoch s"])
    run_matrix = ctx.param("matrix", 1) == 1
    matrix_rows, matrix_checks, matrix_notes = [], [], []
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
            steady[threads] = steady_wait(trained.history)
        torch.set_num_threads(default_threads)
        if run_matrix:
            matrix_rows, matrix_checks, matrix_notes = matrix(ctx, config, root, tmp, epochs)
    torch.set_num_threads(default_threads)
    data = experiment.data
    result.checks = [
        Check("data wait, epochs 2+", steady[default_threads], "<=", 0.10, unit=""),
        *matrix_checks,
    ]
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
    if matrix_rows:
        columns = ["files", "ρ", "decoder", "augment", "workers", "clips/s", "data wait"]
        table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in matrix_rows:
            table.append(
                "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |"
            )
        result.notes.append("The ρ = 4 matrix (one row per run, epochs 2+):\n\n" + "\n".join(table) + "\n")
    result.notes.extend(matrix_notes)
    if steady[default_threads] > PROFILE_HINT_WAIT:
        result.notes.append(
            f"Data wait is {steady[default_threads]:.0%} of the training time: `rho data profile {data.train}` "
            "measures what decoding one item costs and whether `rho data transcode` would make it cheaper."
        )
    if not result.checks[0].met:
        result.notes.append(
            f"What limits it: the training process and {workers} workers share {cores} cores. Decoding is "
            f"{decode_only_s / decode_s:.0%} of a batch's data cost (open, demux and H.264 decode of every "
            f"frame up to the last one needed, most of them never shown); per-clip augmentation the rest. The "
            f"step is short (a small 3D CNN on {data.crop} px clips), so when the workers run, the training "
            f"threads lose cores to them."
        )
    return result
