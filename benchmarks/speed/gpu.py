"""GPU throughput: ρBYOL, ρ = 2, Slow R-50 8×8 at 224 px in bf16, trained by the real engine.

``harness.train.pretrain`` (bf16 autocast, channels_last_3d, pinned memory) on textured
H.264 videos of 10 s at 30 fps, 320×240, decoded and augmented by DataLoader workers; the
engine reports clips/s and the share of time spent waiting for data per epoch. Without a
CUDA device the benchmark is skipped (and says so).
"""

from __future__ import annotations

import tempfile

import torch

from harness.config import Experiment, load_experiment
from harness.data.manifest import write_manifest
from harness.speed import SpeedContext, SpeedResult
from harness.speed.environment import cuda_device, usable_cores
from harness.speed.media import textured_videos
from harness.train import pretrain

TITLE = "ρBYOL ρ=2, Slow R-50 8x8 at 224, bf16 on one GPU: clips/s and data wait"
GOAL = "record clips/s and the data-wait fraction on a GPU (no threshold given)"
ORDER = 8
PARAMS = {
    "videos": "training videos (default 128)",
    "batch": "videos per batch (default 32)",
    "workers": "DataLoader workers (default: cores - 1)",
    "epochs": "epochs (default 3; the first warms up)",
}


def gpu_experiment(
    manifest: str, batch: int, workers: int, epochs: int, crop: int, output_dir: str
) -> Experiment:
    """The benchmark's training config: ρBYOL ρ = 2, Slow R-50, 8 x 8 clips, bf16 on CUDA."""
    tree = {
        "data": {
            "dataset": "kinetics400",
            "train": manifest,
            "clips": 2,
            "frames": 8,
            "stride": 8,
            "crop": crop,
            "batch_size": batch,
            "workers": workers,
        },
        "backbone": {"name": "slow_r50"},
        "method": {"name": "byol"},
        "optim": {"name": "lars", "lr": 0.3, "base_batch_size": 256, "epochs": epochs, "warmup_epochs": 0},
        "eval": {"benchmarks": []},
        "runtime": {"device": "cuda", "precision": "bf16", "output_dir": output_dir},
    }
    return load_experiment(None, {}, base=tree)


def run(ctx: SpeedContext) -> SpeedResult:
    result = ctx.result(["epoch", "clips/s", "data wait", "epoch s"])
    if not torch.cuda.is_available():
        result.skipped = "no CUDA device"
        return result
    videos = ctx.param("videos", 16 if ctx.quick else 128)
    batch = ctx.param("batch", 4 if ctx.quick else 32)
    workers = ctx.param("workers", max(1, usable_cores() - 1))
    epochs = ctx.param("epochs", 2 if ctx.quick else 3)
    entries = textured_videos(ctx.workdir / "videos", videos, 10.0, 30, 320, 240)
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        manifest = write_manifest(
            f"{tmp}/train.csv", [{"path": str(e.path), "label": e.label} for e in entries]
        )
        crop = 112 if ctx.quick else 224
        experiment = gpu_experiment(str(manifest), batch, workers, epochs, crop, f"{tmp}/checkpoints")
        trained = pretrain(experiment, tracking_uri=f"sqlite:///{tmp}/mlflow.db", print_progress=False)
    for record in trained.history:
        result.rows.append(
            [int(record["epoch"]), record["clips_per_s"], record["data_wait"], record["epoch_time"]]
        )
    result.notes = [
        f"{cuda_device()}; {videos} videos (10 s, 30 fps, 320x240 H.264), batch {batch} videos x 2 clips, "
        f"{workers} workers on {usable_cores()} cores; LARS; epoch 1 includes cuDNN autotuning and worker start.",
    ]
    return result
