"""The training augmentation: torchvision v2's pipeline, our per-clip path and our batched path.

``train_transform`` (``TrainClipTransform``, the per-clip path that DataLoader workers run with
``data.augment.placement: worker``) runs the same steps, draws and tensor kernels as
``reference_train_transform``, a ``torchvision.transforms.v2.Compose`` (random resized crop,
flip, float conversion, colour jitter, grayscale, blur, normalisation), but calls the kernels
directly instead of through v2's per-call machinery. Both get the same uint8 clip and the same
seed, interleaved clip by clip, and must return bit-identical tensors.

``BatchedAugment`` (``data.augment.placement: device``) applies the same draws to a whole batch
of clips at once; here on the CPU, with the same single thread, timed batch by batch interleaved
with the per-clip path on the same clips and seeds (its time includes drawing the parameters,
which the workers do), and compared with it element by element.
"""

from __future__ import annotations

import torch

from harness.config import AugmentConfig
from harness.data.batched import BatchedAugment
from harness.data.transforms import reference_train_transform, train_transform
from harness.speed import Check, SpeedContext, SpeedResult
from harness.speed.media import Stopwatch

TITLE = "clips/s augmenting clips: the v2 pipeline, our per-clip path and our batched path, one thread"
GOAL = (
    "per-clip path at least 2x the v2 pipeline, bit-identical; batched CPU augmentation at least 2x the "
    "per-clip path, equal to float rounding; both at the demo's 4x32x32 clips"
)
ORDER = 2
PARAMS = {
    "clips": "clips per case (default 2000; quick 100)",
    "batch": "clips per batch of the batched path (default 128, the demo's 64 videos x 2; quick 16)",
}

CASES = (
    # label, frames, source side, crop, augmentation
    ("demo: 4x64² -> 32²", 4, 64, 32, AugmentConfig(crop_scale=[0.6, 1.0])),
    ("paper aug: 4x64² -> 32²", 4, 64, 32, AugmentConfig()),
    ("Kinetics: 8x256² -> 224²", 8, 256, 224, AugmentConfig()),
)


def batched_case(ours, batched, source: torch.Tensor, count: int, batch: int) -> tuple[float, float, float]:
    """clips/s of the per-clip path and of the batched path (drawing included) on the same clips and
    seeds, batch by batch interleaved, and the largest difference between their outputs."""
    watch = Stopwatch()
    largest = 0.0
    height, width = source.shape[2:4]
    for start in range(-batch, count, batch):  # one warm-up batch, untimed
        seeds = range(start, start + batch)
        clips = torch.stack([source[seed % len(source)] for seed in seeds])
        with watch("per-clip"):
            expected = []
            for seed, clip in zip(seeds, clips, strict=True):
                torch.manual_seed(seed + batch)
                expected.append(ours(clip))
        with watch("batched"):
            draws = []
            for seed in seeds:
                torch.manual_seed(seed + batch)
                draws.append(ours.draw(height, width))
            out = batched(clips, torch.stack(draws))
        largest = max(largest, float((out - torch.stack(expected)).abs().max()))
        if start < 0:
            watch.seconds.clear()
    timed = len(range(0, count, batch)) * batch
    return timed / watch.seconds["per-clip"], timed / watch.seconds["batched"], largest


def run(ctx: SpeedContext) -> SpeedResult:
    clips = ctx.param("clips", 100 if ctx.quick else 2000)
    batch = ctx.param("batch", 16 if ctx.quick else 128)
    torch.set_num_threads(1)  # one DataLoader worker
    columns = ["case", "v2 clips/s", "ours clips/s", "ours / v2", "bit-identical"]
    columns += ["batched clips/s", "batched / per-clip", "batched - per-clip, max"]
    result = ctx.result(columns)
    generator = torch.Generator().manual_seed(0)
    for label, frames, side, crop, augment in CASES:
        count = max(4, clips // 20) if crop > 64 else clips  # the large case is ~50x the work per clip
        ours, reference = train_transform(crop, augment), reference_train_transform(crop, augment)
        source = torch.randint(0, 256, (8, frames, side, side, 3), dtype=torch.uint8, generator=generator)
        watch = Stopwatch()
        identical = True
        for index in range(-2, count):  # two warm-up clips, untimed
            clip = source[index % len(source)]
            torch.manual_seed(index + 2)
            with watch("v2"):
                expected = reference(clip)
            torch.manual_seed(index + 2)
            with watch("ours"):
                out = ours(clip)
            identical &= bool(torch.equal(out, expected))
            if index == -1:
                watch.seconds.clear()
        speed = {name: count / watch.seconds[name] for name in ("v2", "ours")}
        per_clip, together, largest = batched_case(
            ours, BatchedAugment(crop, augment), source, count, min(batch, count)
        )
        row = [label, speed["v2"], speed["ours"], speed["ours"] / speed["v2"], identical]
        result.rows.append([*row, together, together / per_clip, largest])
    demo = result.rows[0]
    result.checks = [
        Check("ours / v2 on the demo's clips", demo[3], ">=", 2.0),
        Check("batched / per-clip on the demo's clips", demo[6], ">=", 2.0),
        Check("largest batched - per-clip difference", max(r[7] for r in result.rows), "<=", 1e-4, unit=""),
    ]
    result.notes = [
        f"{clips} clips per 32 px case ({max(4, clips // 20)} at 224 px), one torch thread, the same seed for "
        "both pipelines clip by clip; `bit-identical`: every output equal to the v2 pipeline's.",
        "The v2 pipeline uses our RandomGrayscale: torchvision's own passes video tensors through unchanged.",
        "What is left of our time is the kernels themselves (antialiased resize, colour operations, "
        "normalisation): v2's per-call machinery was about 30% of its time at 32 px and is negligible at 224 px.",
        f"Batched: {batch} clips per batch ({min(batch, max(4, clips // 20))} at 224 px), the same thread; its "
        "time includes drawing each clip's parameters (the workers' share with data.augment.placement: "
        "device). `batched / per-clip` is the ratio of the two columns measured in the same batches; the "
        "per-clip column there is the `ours` path again, timed batch by batch. On the CPU the batched path "
        "crops with the same uint8 kernel, clip by clip, and runs the colour steps on a few clips at a time "
        "(4 MiB of floats: a whole batch of large clips falls out of cache between passes); its colour steps "
        "make more passes over memory than the per-clip kernels, so it is not faster here. On a GPU the "
        "batch is a few kernels (benchmarks/speed/gpu.py).",
    ]
    return result
