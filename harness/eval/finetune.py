"""The fine-tuning protocol: a copy of the encoder plus dropout and a linear head, trained end to end.

``train_on_clips`` and ``score_on_views`` are shared with the ``linear_slowfast`` protocol, which
trains only the head.

Trained on augmented training clips (SGD with Nesterov momentum, warmup, half-cosine; no weight decay on
biases and norm layers), then tested like the linear protocol: softmax averaged over the test
views. The benchmark files give the paper's settings (``benchmarks/ucf101_split1_finetune.yaml``)
or CPU-sized ones (``synth_finetune.yaml``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.data import MultiClipDataset, train_transform
from harness.data.epoch_order import EpochSampler
from harness.data.manifest import read_manifest
from harness.eval.context import EvalContext
from harness.eval.features import benchmark_views, eval_mode, extract_features
from harness.eval.metrics import accuracy, class_count, view_probabilities
from harness.eval.spec import Benchmark, FinetuneSpec, LinearSlowFastSpec
from harness.optim import lr_at, set_lr
from harness.progress import ProgressBar
from harness.runtime import Device, Runtime
from methods.base import weight_decay_groups


def _feature_dim(encoder: nn.Module, frames: int, crop: int, device: torch.device) -> int:
    """D of ``encoder``'s output, from one blank clip in eval mode."""
    with eval_mode(encoder), torch.no_grad():
        return encoder(torch.zeros(1, 3, frames, crop, crop, device=device)).shape[-1]


def classifier_network(
    encoder: nn.Module, num_classes: int, dropout: float, frames: int, crop: int, device: Device = "cpu"
) -> nn.Sequential:
    """A copy of ``encoder`` → dropout → linear head (weights N(0, 0.01²), bias 0, as SlowFast's head).

    ``frames`` and ``crop`` give the clip shape used once to find the encoder's feature size.
    """
    runtime = Runtime.for_device(device)
    # every weight trains, also where the encoder is an EMA copy kept without gradients (V-JEPA's target)
    body = copy.deepcopy(encoder).to(runtime.device).requires_grad_(True)
    head = nn.Linear(_feature_dim(body, frames, crop, runtime.device), num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return runtime.prepare_model(nn.Sequential(body, nn.Dropout(dropout), head))


Schedule = Callable[[int, int], float]
"""The lr of a training step: (step, steps per epoch) → lr."""


def train_classifier(
    model: nn.Module,
    dataset: MultiClipDataset,
    settings: FinetuneSpec | LinearSlowFastSpec,
    device: Device = "cpu",
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    schedule: Schedule | None = None,
) -> set[int]:
    """Train ``model`` (clips [B, C, T, H, W] → logits) on view 0 of ``dataset``'s items with cross-entropy.

    SGD with ``settings``' lr, momentum (Nesterov if ``settings.nesterov``, as SlowFast) and
    weight decay (not on biases and norm layers) over the parameters that require a gradient;
    the lr follows ``schedule`` (default: linear warmup over ``settings.warmup_epochs``, then a
    half-cosine). ``dataset`` should hold one view per item
    (``min_views=1`` at ρ = 1); any others are decoded and augmented for nothing. An unreadable
    video is skipped as in pretraining (its item comes from the next row).

    Returns:
        The rows of ``dataset`` that could not be read, found from the items (so whatever the
        worker count).
    """
    runtime = Runtime.for_device(device)
    sampler = EpochSampler(len(dataset), seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
    )
    optimizer = classifier_optimizer(model, settings)
    total, warmup = settings.epochs * len(loader), round(settings.warmup_epochs * len(loader))
    bar = ProgressBar("classifier", settings.epochs) if progress else None
    model.train()
    step, unreadable = 0, set()
    for epoch in range(settings.epochs):
        sampler.set_epoch(epoch)
        for batch in map(dataset.note_skips, loader):  # warns once per bad file, whatever the workers
            unreadable |= skipped_rows(batch["index"], batch["skipped"], len(dataset))
            lr = schedule(step, len(loader)) if schedule else lr_at(step, total, warmup, settings.lr)
            set_lr(optimizer, lr)
            with runtime.autocast():
                logits = model(runtime.clips_to_device(batch["clips"][:, 0]))
            loss = F.cross_entropy(logits.float(), batch["label"].to(runtime.device))
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"classifier loss became {loss.item()} at step {step}; lower the benchmark's lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if bar:
            bar.update(epoch + 1, {"loss": loss.item(), "lr": lr})
    return unreadable


def classifier_optimizer(model: nn.Module, settings: FinetuneSpec | LinearSlowFastSpec) -> torch.optim.SGD:
    """SGD over ``model``'s trainable parameters as SlowFast's ``construct_optimizer`` builds it
    (optimizer.py:105-113: ``nesterov=SOLVER.NESTEROV``, True by default, defaults.py:842;
    dampening 0), with no weight decay on biases and norm layers."""
    return torch.optim.SGD(
        weight_decay_groups(model, settings.weight_decay),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov and settings.momentum > 0,  # torch refuses Nesterov without momentum
    )


def skipped_rows(rows: torch.Tensor, skipped: torch.Tensor, videos: int) -> set[int]:
    """The rows a batch of ``MultiClipDataset`` items passed over: an item of row r that skipped
    s videos tried rows r - s … r - 1 (modulo the ``videos``) and could not read them."""
    return {
        (row - back) % videos
        for row, count in zip(rows.tolist(), skipped.tolist(), strict=True)
        for back in range(1, count + 1)
    }


def train_on_clips(
    benchmark: Benchmark,
    context: EvalContext,
    build: Callable[[int], nn.Module],
    crop: int,
    schedule: Schedule | None = None,
) -> nn.Module:
    """The network ``build(classes)`` makes, trained by ``train_classifier`` on one augmented random
    clip per training video and step (``MultiClipDataset`` ρ = 1, one view, ``crop`` pixels, the
    benchmark settings' ``augment``).

    Randomness (the network's init, dropout, data) derives from ``context.seed`` without disturbing
    the caller's RNG. Unreadable training videos are skipped as in pretraining and noted in
    ``context``, which refuses too many.
    """
    settings, views = benchmark.settings, benchmark.views
    device, seed = context.runtime.device, context.seed
    train_entries, test_entries = (
        read_manifest(benchmark.train),
        benchmark_views(benchmark, "test", context.decoder).entries,
    )
    labels = [torch.tensor([e.label for e in entries]) for entries in (train_entries, test_entries)]
    train_set = MultiClipDataset(
        train_entries,
        clips=1,
        frames=views.frames,
        stride=views.stride,
        transform=train_transform(crop, settings.augment),
        seed=seed,
        fps=views.fps,
        min_views=1,  # one augmented clip per video and step: no second view decoded and thrown away
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build(class_count(*labels))
        unreadable = train_classifier(
            model, train_set, settings, device, context.workers, seed, context.progress, schedule
        )
    context.note_skipped(
        benchmark.train, len(train_entries), {train_entries[row].path: "" for row in sorted(unreadable)}
    )
    return model


def score_on_views(
    model: nn.Module, benchmark: Benchmark, context: EvalContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [M, C] of the readable test videos, each the mean of the softmax of
    ``model`` (eval mode) over its test views, and their labels [M]; unreadable ones noted in ``context``."""
    test_set = benchmark_views(benchmark, "test", context.decoder)
    logits, labels = extract_features(
        model, test_set, context.batch_size, context.workers, context.runtime.device, context.progress
    )
    context.note_skipped(benchmark.val, len(test_set), test_set.bad_files)
    return view_probabilities(logits), labels


def run_finetune(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> dict[str, float]:
    """Fine-tune a copy of ``encoder`` with a linear head on the training videos; test with view averaging.

    Training items are one clip per video with the benchmark's augmentation (``train_on_clips``);
    ``encoder`` itself is left untouched. Unreadable videos are skipped (training as in
    pretraining, testing without them) and noted in ``context``, which refuses too many.

    Returns:
        ``{"top1": %, "top5": %}`` on the readable test videos, softmax averaged over the test views.
    """
    settings, views = benchmark.settings, benchmark.views
    device = context.runtime.device

    def build(classes: int) -> nn.Module:
        return classifier_network(encoder, classes, settings.dropout, views.frames, views.crop, device)

    model = train_on_clips(benchmark, context, build, views.crop)
    return accuracy(*score_on_views(model, benchmark, context))
