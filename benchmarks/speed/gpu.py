"""GPU throughput: ρBYOL, Slow R-50 8×8 at 224 px in bf16, ρ = 2 and 4, each decoder and augmentation placement.

``harness.train.pretrain`` (bf16 autocast, channels_last_3d, pinned memory) on textured H.264
videos of 10 s at 30 fps, 340×256, decoded by DataLoader workers and augmented either by them
(``data.augment.placement: worker``) or by the training process on the GPU (``device``); for each
decoder backend ``data.decoder`` offers. Each configuration is one short pretraining (the first
epoch warms up: cuDNN autotuning, worker start) recording clips/s, the share of time spent
waiting for data and the peak GPU memory; each runs in its own try (a failure is a note, the
others still run) and none starts once the time budget (``max_seconds``) would be passed.

One prepared script for a session that is lent a GPU for a few minutes:
``python benchmarks/speed/gpu.py --max-seconds 420`` (or ``rho bench gpu --param
max_seconds=420``) writes its section of benchmarks/RESULTS.md. Without a CUDA device it is skipped
(and says so); ``--dry-run`` runs the same configurations on the CPU at tiny sizes, which the
tests do.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.config import AUGMENT_PLACEMENTS, DataConfig, Experiment, load_experiment
from harness.data.manifest import write_manifest
from harness.speed import SpeedContext, SpeedResult
from harness.speed.environment import cuda_device, usable_cores
from harness.speed.media import peak_rss_bytes, reset_peak_rss, textured_videos
from harness.train import pretrain

TITLE = "ρBYOL Slow R-50 8x8 at 224, bf16 on one GPU: clips/s, data wait and peak memory per ρ, decoder, placement"
GOAL = "record clips/s, the data-wait fraction and peak memory on a GPU (no threshold given)"
ORDER = 8
PARAMS = {
    "videos": "training videos (default 96)",
    "batch": "videos per batch (default 32)",
    "workers": "DataLoader workers (default: cores - 1)",
    "epochs": "epochs per configuration (default 2; the first warms up)",
    "clips": "the ρ values, comma-separated (default 2,4)",
    "decoders": "decoder backends (default: every choice of data.decoder), comma-separated",
    "max_seconds": "time budget: no configuration starts that would end past it (default 420)",
    "dry_run": "1: the same configurations on the CPU at tiny sizes (r3d_tiny, 32 px), to check the script",
}


def decoder_choices() -> tuple[str, ...]:
    """The values ``data.decoder`` takes (just PyAV where the key does not exist)."""
    fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    return tuple(fields["decoder"].metadata.get("choices", ("pyav",))) if "decoder" in fields else ("pyav",)


def gpu_experiment(
    manifest: str,
    batch: int,
    workers: int,
    epochs: int,
    crop: int,
    output_dir: str,
    clips: int = 2,
    decoder: str | None = None,
    placement: str = "worker",
    dry_run: bool = False,
) -> Experiment:
    """The benchmark's training config: ρBYOL, Slow R-50, 8 x 8 clips, bf16 on CUDA (``dry_run``:
    r3d_tiny, 2 x 2 clips, fp32 on the CPU)."""
    data = {
        "dataset": "kinetics400",
        "train": manifest,
        "clips": clips,
        "frames": 2 if dry_run else 8,
        "stride": 2 if dry_run else 8,
        "crop": crop,
        "batch_size": batch,
        "workers": workers,
        "augment": {"placement": placement},
    }
    if decoder is not None:
        data["decoder"] = decoder
    tree = {
        "data": data,
        "backbone": {"name": "r3d_tiny", "width": 4} if dry_run else {"name": "slow_r50"},
        "method": {"name": "byol"},
        "optim": {"name": "lars", "lr": 0.3, "base_batch_size": 256, "epochs": epochs, "warmup_epochs": 0},
        "eval": {"benchmarks": []},
        "runtime": {
            "device": "cpu" if dry_run else "cuda",
            "precision": "fp32" if dry_run else "bf16",
            "output_dir": output_dir,
        },
    }
    return load_experiment(None, {}, base=tree)


def _reset_peak(on_cuda: bool) -> None:
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()


def _peak_gib(on_cuda: bool) -> float:
    return (torch.cuda.max_memory_allocated() if on_cuda else peak_rss_bytes()) / 2**30


def run(ctx: SpeedContext) -> SpeedResult:
    dry_run = ctx.param("dry_run", 0) == 1
    columns = ["ρ", "decoder", "augment", "clips/s", "data wait", "peak memory GiB", "seconds"]
    result = ctx.result(columns)
    if not dry_run and not torch.cuda.is_available():
        result.skipped = "no CUDA device"
        return result
    started = time.perf_counter()
    budget = ctx.param("max_seconds", 420.0, float)
    small = dry_run or ctx.quick
    videos = ctx.param("videos", 4 if small else 96)
    batch = ctx.param("batch", 2 if small else 32)
    workers = ctx.param("workers", 1 if dry_run else max(1, usable_cores() - 1))
    epochs = ctx.param("epochs", 2)
    rhos = [int(r) for r in ctx.param("clips", "2,4", str).split(",") if r]
    decoders = [d for d in ctx.param("decoders", ",".join(decoder_choices()), str).split(",") if d]
    has_decoder_key = "decoder" in {f.name for f in dataclasses.fields(DataConfig)}
    size = (64, 48) if dry_run else (340, 256)
    seconds = 1.0 if dry_run else 10.0
    entries = textured_videos(ctx.workdir / "videos", videos, seconds, 8 if dry_run else 30, *size)
    manifest = write_manifest(
        ctx.workdir / "videos" / "gpu.csv", [{"path": str(e.path), "label": e.label} for e in entries]
    )
    crop = 32 if dry_run else (112 if ctx.quick else 224)
    on_cuda = not dry_run
    longest = 0.0  # the longest configuration so far: the next one is not started unless it fits
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        for rho in rhos:
            for decoder in decoders:
                for placement in AUGMENT_PLACEMENTS:
                    label = f"ρ={rho} {decoder} {placement}"
                    if longest and time.perf_counter() - started + longest > budget:  # the first always runs
                        result.notes.append(f"{label}: not run, the {budget:g} s budget would be passed")
                        continue
                    if not has_decoder_key and decoder != "pyav":
                        result.notes.append(f"{label}: skipped, data.decoder does not exist in this version")
                        continue
                    began = time.perf_counter()
                    try:
                        experiment = gpu_experiment(
                            str(manifest),
                            batch,
                            workers,
                            epochs,
                            crop,
                            f"{tmp}/checkpoints",
                            clips=rho,
                            decoder=decoder if has_decoder_key else None,
                            placement=placement,
                            dry_run=dry_run,
                        )
                        _reset_peak(on_cuda)
                        trained = pretrain(
                            experiment,
                            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                            output=Path(tmp) / label.replace(" ", "_"),
                            print_progress=False,
                        )
                    except Exception as exc:  # one configuration's failure is a note; the others run
                        result.notes.append(f"{label}: failed, {type(exc).__name__}: {str(exc)[:300]}")
                        continue
                    finally:
                        longest = max(longest, time.perf_counter() - began)
                    last = trained.history[-1]
                    result.rows.append(
                        [
                            rho,
                            decoder,
                            placement,
                            last["clips_per_s"],
                            last["data_wait"],
                            _peak_gib(on_cuda),
                            time.perf_counter() - began,
                        ]
                    )
    where = "CPU dry run (r3d_tiny, 2 x 2 clips at 32 px, fp32)" if dry_run else cuda_device()
    result.notes.insert(
        0,
        f"{where}; {videos} videos ({seconds:g} s, {size[0]}x{size[1]} H.264), batch {batch} videos x ρ clips, "
        f"{workers} workers on {usable_cores()} cores; LARS; {epochs} epochs per configuration, clips/s and "
        f"data wait of the last (epoch 1 includes cuDNN autotuning and worker start); peak memory: "
        f"{'torch.cuda.max_memory_allocated' if on_cuda else 'the process peak RSS'} per configuration; "
        f"{time.perf_counter() - started:.0f} s in all (budget {budget:g} s).",
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/speed/gpu.py [--dry-run] [--max-seconds N] [--output FILE]``: this benchmark alone."""
    import argparse

    from harness.speed import run_benchmarks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU at tiny sizes, to check the script")
    parser.add_argument("--max-seconds", type=float, default=420.0, help="time budget (default 420)")
    parser.add_argument(
        "--output", default=None, help="results file (default benchmarks/RESULTS.md; none for a dry run)"
    )
    parser.add_argument("--workdir", default="mlruns/bench", help="cached videos and scratch files")
    args = parser.parse_args(argv)
    params = [f"gpu.max_seconds={args.max_seconds:g}", *(["gpu.dry_run=1"] if args.dry_run else [])]
    # a dry run leaves the results file alone unless one is named
    kwargs = {"output": args.output} if args.output else ({"output": None} if args.dry_run else {})
    results = run_benchmarks(["gpu"], params=params, workdir=args.workdir, **kwargs)
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
