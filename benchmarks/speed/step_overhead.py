"""One training step through the harness vs a minimal hand-written PyTorch loop doing the same math.

Ours: ``harness.train._train_epoch`` — the engine's loop (lr schedule, autocast, the method's
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
import types

import torch
import torch.nn.functional as F

from harness.config import load_experiment
from harness.optim import build_optimizer, lr_at, scaled_lr
from harness.progress import ProgressBar
from harness.runtime import Runtime
from harness.speed import Check, SpeedContext, SpeedResult
from harness.tracking import RunLogger
from harness.train import _train_epoch, build_method
from methods._ema import cosine_momentum
from methods.byol import regression_loss
from methods.moco import info_nce_loss
from methods.simclr import nt_xent_loss
from methods.swav import sinkhorn, swapped_prediction_loss

TITLE = "one training step through the harness vs a hand-written PyTorch loop (same math)"
GOAL = "harness step time at most 1.05x the hand-written loop's, for every method"
ORDER = 3
PARAMS = {"rounds": "timed rounds (default 10; quick 2)", "steps": "steps per round (default 4; quick 2)"}

METHODS = {
    "simclr": {"name": "simclr", "temperature": 0.2, "hidden_dims": [256], "out_dim": 64},
    "swav": {"name": "swav", "hidden_dims": [256], "out_dim": 64, "num_prototypes": 64},
    "moco": {"name": "moco", "hidden_dims": [256], "out_dim": 64, "queue_size": 4096, "temperature": 0.2},
    "byol": {"name": "byol", "projector_hidden_dims": [256], "out_dim": 64, "predictor_hidden_dims": [256]},
}


def _ema(online: torch.nn.Module, target: torch.nn.Module, momentum: float) -> None:
    with torch.no_grad():
        for p, t in zip(online.parameters(), target.parameters(), strict=True):
            t.mul_(momentum).add_(p, alpha=1 - momentum)
        for b, t in zip(online.buffers(), target.buffers(), strict=True):
            t.copy_(b)


def hand_loss(name: str, m: torch.nn.Module, clips: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
    """The loss of one step written out in plain PyTorch on the method's modules."""
    views = clips.shape[1]
    pairs = views * (views - 1)
    if name == "simclr":
        z = torch.stack([m.head(m.backbone(clips[:, v])) for v in range(views)], dim=1)
        return nt_xent_loss(z, m.temperature, m.pairs, gather_distributed=False)
    if name == "swav":
        with torch.no_grad():
            m.prototypes.weight.copy_(F.normalize(m.prototypes.weight, dim=1))
        z = torch.stack([F.normalize(m.head(m.backbone(clips[:, v])), dim=-1) for v in range(views)], dim=1)
        prototypes = (
            m.prototypes.weight.detach() if m.epoch < m.freeze_prototypes_epochs else m.prototypes.weight
        )
        scores = z @ prototypes.T
        codes = torch.stack(
            [sinkhorn(scores[:, c], m.epsilon, m.sinkhorn_iterations) for c in range(2)], dim=1
        )
        return swapped_prediction_loss(scores, codes, m.temperature)
    if name == "moco":
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
    with torch.no_grad():  # byol
        targets = torch.stack([m.target_projector(m.target_backbone(clips[:, v])) for v in range(views)], 1)
    total = 0.0
    for v in range(views):
        p = m.predictor(m.projector(m.backbone(clips[:, v])))
        total = total + sum(regression_loss(p, targets[:, t]) for t in range(views) if t != v) / pairs
    return total


def hand_steps(name, m, optimizer, batches, step, total, warmup, peak_lr) -> int:
    """The reference loop over ``batches``; returns the new step count."""
    for batch in batches:
        lr = lr_at(step, total, warmup, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = hand_loss(name, m, batch["clips"], batch["index"])
        loss.backward()
        optimizer.step()
        step += 1
        if name in ("moco", "byol"):
            momentum = cosine_momentum(m.base_momentum, step / total)
            m.momentum = momentum
            pairs = [(m.backbone, m.target_backbone)]
            pairs.append((m.head, m.target_head) if name == "moco" else (m.projector, m.target_projector))
            for online, target in pairs:
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
    for name, params in METHODS.items():
        tree = {
            "data": {"clips": 2, "frames": frames, "stride": 2, "crop": crop, "batch_size": batch},
            "backbone": {"name": "r3d_tiny", "width": width},
            "method": params,
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
        runtime = Runtime.setup(experiment.runtime)
        dataset = types.SimpleNamespace(bad_files=set())  # what _train_epoch reads of the dataset
        tracker = RunLogger(uri, "rho-bench-step", run_name=name)
        ours_times, hand_times = [], []
        step_ours = step_hand = 0
        for index in range(rounds + 1):  # round 0 warms up
            bar = ProgressBar(f"bench {name}", steps, stream=io.StringIO())
            started = time.perf_counter()
            _, step_ours = _train_epoch(
                ours, iter(batches), dataset, optimizer, runtime, experiment, step_ours,
                total, 0, peak_lr, tracker, bar,
            )  # fmt: skip
            middle = time.perf_counter()
            step_hand = hand_steps(name, hand, hand_optimizer, batches, step_hand, total, 0, peak_lr)
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
        f"hand-written loop; ms/step are medians over rounds, the ratio is the median of the rounds' ratios.",
    ]
    return result
