"""One training step through the harness vs a minimal hand-written PyTorch loop doing the same math.

Ours: ``harness.train.train_epoch`` — the engine's loop (lr schedule, autocast, the method's
``training_step`` with its metrics, NaN check, gradient averaging, ``on_step_end``, MLflow
step logging into a real sqlite store, the progress bar) — over ready-made batches, so no
data loading is timed. The reference: the same modules and the methods' published loss
functions (``nt_xent_loss``, ``sinkhorn`` + ``swapped_prediction_loss``, ``info_nce_loss``
with a key queue, ``regression_loss``), forward, backward, AdamW step, EMA update, in a plain
``for`` loop. Both start from the same weights and see the same batches; after the run their
weights must agree (the ``max abs Δw`` column), which shows the math is the same.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import methods
from harness.config import load_experiment
from harness.optim import build_optimizer, lr_at, scaled_lr
from harness.progress import ProgressBar
from harness.runtime import Runtime
from harness.speed import Check, SpeedContext, SpeedResult
from harness.tracking import RunLogger
from harness.train import EpochContext, Schedule, build_method, train_epoch
from methods import cosine_momentum
from methods.byol import regression_loss
from methods.moco import info_nce_loss
from methods.simclr import nt_xent_loss
from methods.swav import sinkhorn, swapped_prediction_loss

TITLE = "one training step through the harness vs a hand-written PyTorch loop (same math)"
GOAL = "harness step time at most 1.05x the hand-written loop's, for every method"
ORDER = 3
PARAMS = {"rounds": "timed rounds (default 10; quick 2)", "steps": "steps per round (default 4; quick 2)"}


def _ema(online: torch.nn.Module, target: torch.nn.Module, momentum: float) -> None:
    with torch.no_grad():
        for p, t in zip(online.parameters(), target.parameters(), strict=True):
            t.mul_(momentum).add_(p, alpha=1 - momentum)
        for b, t in zip(online.buffers(), target.buffers(), strict=True):
            t.copy_(b)


def simclr_loss(m: torch.nn.Module, clips: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """NT-Xent over the head outputs of every clip."""
    views = clips.shape[1]
    z = torch.stack([m.head(m.backbone(clips[:, v])) for v in range(views)], dim=1)
    return nt_xent_loss(z, m.temperature, m.pairs, gather_distributed=False)


def swav_loss(m: torch.nn.Module, clips: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """Swapped prediction against Sinkhorn codes of the first two clips, on normalised prototypes."""
    views = clips.shape[1]
    with torch.no_grad():
        m.prototypes.weight.copy_(F.normalize(m.prototypes.weight, dim=1))
    z = torch.stack([F.normalize(m.head(m.backbone(clips[:, v])), dim=-1) for v in range(views)], dim=1)
    prototypes = m.prototypes.weight.detach() if m.epoch < m.freeze_prototypes_epochs else m.prototypes.weight
    scores = z @ prototypes.T
    codes = torch.stack([sinkhorn(scores[:, c], m.epsilon, m.sinkhorn_iterations) for c in range(2)], dim=1)
    return swapped_prediction_loss(scores, codes, m.temperature)


def moco_loss(m: torch.nn.Module, clips: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """InfoNCE of each clip's query against the other clips' momentum keys and the queue; then enqueue."""
    views = clips.shape[1]
    pairs = views * (views - 1)
    with torch.no_grad():
        keys = torch.stack(
            [F.normalize(m.target_head(m.target_backbone(clips[:, v])), dim=-1) for v in range(views)], 1
        )
    negatives = m.queue.keys.clone()
    own_video = videos[:, None] == m.queue.videos[None, :]  # not a negative of its own video's query
    total = 0.0
    for v in range(views):
        q = F.normalize(m.head(m.backbone(clips[:, v])), dim=-1)
        total = (
            total
            + sum(
                info_nce_loss(q, keys[:, t], negatives, m.temperature, own_video)
                for t in range(views)
                if t != v
            )
            / pairs
        )
    new = keys.transpose(0, 1).reshape(-1, keys.shape[-1])
    rows = (int(m.queue.pointer) + torch.arange(len(new))) % m.queue.size
    m.queue.keys[rows] = new
    m.queue.videos[rows] = videos.repeat(views)
    m.queue.pointer.fill_((int(m.queue.pointer) + len(new)) % m.queue.size)
    m.queue.count.fill_(min(int(m.queue.count) + len(new), m.queue.size))
    return total


def byol_loss(m: torch.nn.Module, clips: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """Each clip's prediction regressed onto the other clips' momentum projections."""
    views = clips.shape[1]
    pairs = views * (views - 1)
    with torch.no_grad():
        targets = torch.stack([m.target_projector(m.target_backbone(clips[:, v])) for v in range(views)], 1)
    total = 0.0
    for v in range(views):
        p = m.predictor(m.projector(m.backbone(clips[:, v])))
        total = total + sum(regression_loss(p, targets[:, t]) for t in range(views) if t != v) / pairs
    return total


@dataclass(frozen=True)
class Reference:
    """A method's benchmark settings and its step written out in plain PyTorch on its modules."""

    params: dict[str, Any]  # method.* of the benchmark's config
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (method, clips, videos)
    ema_pairs: Callable[[torch.nn.Module], list[tuple[torch.nn.Module, torch.nn.Module]]] | None = None


# The methods measured, in this order. A method without an entry here (a new one, or one without
# a hand-written loop to compare with) is listed in the result's notes as not measured.
REFERENCES: dict[str, Reference] = {
    "simclr": Reference(
        {"name": "simclr", "temperature": 0.2, "hidden_dims": [256], "out_dim": 64}, simclr_loss
    ),
    "swav": Reference({"name": "swav", "hidden_dims": [256], "out_dim": 64, "num_prototypes": 64}, swav_loss),
    "moco": Reference(
        {"name": "moco", "hidden_dims": [256], "out_dim": 64, "queue_size": 4096, "temperature": 0.2},
        moco_loss,
        lambda m: [(m.backbone, m.target_backbone), (m.head, m.target_head)],
    ),
    "byol": Reference(
        {"name": "byol", "projector_hidden_dims": [256], "out_dim": 64, "predictor_hidden_dims": [256]},
        byol_loss,
        lambda m: [(m.backbone, m.target_backbone), (m.projector, m.target_projector)],
    ),
}


def hand_steps(reference: Reference, m, optimizer, batches, step, total, warmup, peak_lr) -> int:
    """The reference loop over ``batches``; returns the new step count."""
    for batch in batches:
        lr = lr_at(step, total, warmup, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = reference.loss(m, batch["clips"], batch["index"])
        loss.backward()
        optimizer.step()
        step += 1
        if reference.ema_pairs is not None:
            momentum = cosine_momentum(m.base_momentum, step / total)
            m.momentum = momentum
            for online, target in reference.ema_pairs(m):
                _ema(online, target, momentum)
        float(loss.detach())  # what a loop prints or checks for NaN
    return step


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(
        (float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point()),
        default=0.0,
    )


def run(ctx: SpeedContext) -> SpeedResult:
    quick = ctx.quick
    rounds = ctx.param("rounds", 2 if quick else 10)
    steps = ctx.param("steps", 2 if quick else 4)
    batch, frames, crop, width = (4, 2, 16, 4) if quick else (64, 4, 32, 16)
    torch.set_num_threads(1)
    uri = f"sqlite:///{(ctx.workdir / 'mlflow.db').resolve()}"
    result = ctx.result(
        ["method", "harness ms/step", "hand-written ms/step", "harness / hand", "max abs Δw", "steps"]
    )
    for name, reference in REFERENCES.items():
        tree = {
            "data": {"clips": 2, "frames": frames, "stride": 2, "crop": crop, "batch_size": batch},
            "backbone": {"name": "r3d_tiny", "width": width},
            "method": reference.params,
            "optim": {"name": "adamw", "lr": 2e-3, "base_batch_size": batch, "epochs": 1, "warmup_epochs": 0},
            "runtime": {"device": "cpu", "log_every": 10},
        }
        experiment = load_experiment(None, {}, check_files=False, base=tree)
        torch.manual_seed(0)
        ours = build_method(experiment)
        hand = copy.deepcopy(ours)
        generator = torch.Generator().manual_seed(1)
        batches = [
            {
                "clips": torch.randn(batch, 2, 3, frames, crop, crop, generator=generator),
                "label": torch.zeros(batch, dtype=torch.long),
                "index": torch.arange(batch),
            }
            for _ in range(steps)
        ]
        total = (rounds + 1) * steps
        peak_lr = scaled_lr(experiment.optim, batch)
        optimizer = build_optimizer(ours.param_groups(0.0), experiment.optim, peak_lr)
        hand_optimizer = torch.optim.AdamW(hand.param_groups(0.0), lr=peak_lr, betas=(0.9, 0.999))
        tracker = RunLogger(uri, "rho-bench-step", run_name=name)
        context = EpochContext(
            ours,
            optimizer,
            Runtime.setup(experiment.runtime),
            Schedule(steps, total, 0, peak_lr, experiment.optim.min_lr_ratio),
            log_every=experiment.runtime.log_every,
            clip_grad=experiment.optim.clip_grad,
            tracker=tracker,
        )
        ours_times, hand_times = [], []
        step_hand = 0
        for index in range(rounds + 1):  # round 0 warms up
            context.bar = ProgressBar(f"bench {name}", steps, stream=io.StringIO())
            started = time.perf_counter()
            train_epoch(context, iter(batches))
            middle = time.perf_counter()
            step_hand = hand_steps(reference, hand, hand_optimizer, batches, step_hand, total, 0, peak_lr)
            ended = time.perf_counter()
            if index:
                ours_times.append((middle - started) / steps)
                hand_times.append((ended - middle) / steps)
        tracker.finish("FINISHED")
        ours_ms, hand_ms = 1000 * statistics.median(ours_times), 1000 * statistics.median(hand_times)
        result.rows.append(
            [name, ours_ms, hand_ms, ours_ms / hand_ms, max_weight_difference(ours, hand), total]
        )
    for row in result.rows:
        result.checks.append(Check(f"{row[0]} harness / hand", row[3], "<=", 1.05))
    result.checks.append(
        Check("max abs Δw harness vs hand", max(r[4] for r in result.rows), "<=", 1e-5, unit="")
    )
    result.notes = [
        f"r3d_tiny width {width}, ρ = 2, T = {frames}, crop {crop}, batch {batch}, AdamW; one torch thread; "
        f"{rounds} rounds of {steps} steps (after a warm-up round), each round timing the harness then the "
        f"hand-written loop; ms/step are medians over rounds, the ratio is the ratio of those medians.",
    ]
    unmeasured = [name for name in methods.available() if name not in REFERENCES]
    if unmeasured:
        result.notes.append(f"not measured (no hand-written reference loop here): {', '.join(unmeasured)}")
    return result
