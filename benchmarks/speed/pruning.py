"""Pruning: ``lr_prune`` (a learning-rate search over four decades) without a pruner, with ASHA
(successive halving) and with the median pruner, over two sampler seeds.

Every run goes through the real study runner (``harness.study.run_worker``: a fresh sqlite
storage, one MLflow child run per trial) with the same spec; only ``pruner`` and the seed differ.
The sampler is random, seeded by the spec's seed, so the three pruners see the same learning
rates for one seed (pruning does not change what a random sampler draws). Trial-epochs count the
epochs each trial trained: a complete trial all of them, a pruned one its ``pruned_at_epoch``, a
failed one (diverged) the epoch of its checkpoint. The best objective is the best final kNN
top-1 (the kNN benchmark after training) among completed trials, averaged over the seeds; "equal" means within two binomial standard
errors of a top-1 on the validation videos.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from harness.config import read_yaml
from harness.data.manifest import read_manifest
from harness.speed import Check, SpeedContext, SpeedResult
from harness.speed.media import QUICK_OVERRIDES, demo_data_root, rho_data
from harness.study import enqueue_points, make_storage, open_study, parse_study, run_worker
from harness.study.attrs import ATTR_DUPLICATE, ATTR_KEY, ATTR_SURPLUS

TITLE = "lr_prune without a pruner, with asha and with median: trial-epochs spent and best objective"
GOAL = (
    "at least 40% fewer trial-epochs with asha for an equal best objective (within seed noise), over 2 seeds"
)
ORDER = 7.5
PARAMS = {
    "trials": "sampled trials per run (default: the spec's 12; quick 4)",
    "epochs": "epochs per trial (default: the spec's 9; quick 3)",
    "seeds": "sampler seeds (default 2)",
}

LR_PRUNE = Path(__file__).resolve().parents[2] / "studies" / "cpu" / "lr_prune.yaml"
PRUNERS = ("none", "asha", "median")


def trial_epochs(study: optuna.Study, epochs: int, checkpoints: Path) -> tuple[int, int, int, int]:
    """(trial-epochs, completed, pruned, failed) over the study's real trials."""
    spent = completed = pruned = failed = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(ATTR_SURPLUS) or trial.user_attrs.get(ATTR_DUPLICATE):
            continue  # bookkeeping trials of the runner, nothing trained
        if trial.state == TrialState.COMPLETE:
            spent, completed = spent + epochs, completed + 1
        elif trial.state == TrialState.PRUNED:
            spent, pruned = spent + int(trial.user_attrs.get("pruned_at_epoch", 0)), pruned + 1
        elif trial.state == TrialState.FAIL:
            last = checkpoints / trial.user_attrs.get(ATTR_KEY, "-") / "last.pt"
            spent += (
                int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
                if last.is_file()
                else 0
            )
            failed += 1
    return spent, completed, pruned, failed


def run(ctx: SpeedContext) -> SpeedResult:
    raw = read_yaml(LR_PRUNE)
    quick = ctx.quick
    overrides = dict(raw.get("overrides") or {})
    if quick:
        overrides.update(QUICK_OVERRIDES)
        overrides["eval.knn_k"] = 3
    epochs = ctx.param("epochs", 3 if quick else overrides["optim.epochs"])
    overrides["optim.epochs"] = epochs
    trials = ctx.param("trials", 4 if quick else raw["search"]["n_trials"])
    seeds = list(range(ctx.param("seeds", 2)))
    root = demo_data_root(ctx.workdir.parent / "data", quick)
    result = ctx.result(
        [
            "pruner",
            "seed",
            "trials",
            "completed",
            "pruned",
            "failed",
            "trial-epochs",
            "best top-1 %",
            "minutes",
        ]
    )
    spent = {p: 0 for p in PRUNERS}
    best: dict[str, list[float]] = {p: [] for p in PRUNERS}
    with rho_data(root), tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        for seed in seeds:
            for pruner in PRUNERS:
                name = f"bench-lr-prune-{pruner}-{seed}"
                spec_raw = copy.deepcopy(raw)
                spec_raw["name"] = name
                spec_raw["overrides"] = {**overrides, "runtime.output_dir": f"{tmp}/checkpoints"}
                spec_raw["search"]["n_trials"] = trials
                spec_raw["seeds"] = [seed]
                spec_raw["pruner"] = (
                    {**raw["pruner"], "type": pruner}
                    if pruner == "asha"
                    else {"type": pruner, "metric": "knn_top1", "warmup_epochs": 1}
                )
                spec = parse_study(spec_raw, LR_PRUNE)
                storage = f"sqlite:///{tmp}/optuna.db"
                started = time.perf_counter()
                enqueue_points(open_study(spec, make_storage(storage, spec)), spec)
                run_worker(spec, storage, f"sqlite:///{tmp}/mlflow.db", quiet=True)
                minutes = (time.perf_counter() - started) / 60
                study = open_study(spec, make_storage(storage, spec))
                used, completed, pruned, failed = trial_epochs(
                    study, epochs, Path(tmp) / "checkpoints" / name
                )
                values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
                top = max(values) if values else float("nan")  # in percent
                spent[pruner] += used
                best[pruner].append(top)
                result.rows.append([pruner, seed, trials, completed, pruned, failed, used, top, minutes])
        val_videos = len(read_manifest(root / "synth" / "val.csv"))
    mean = {p: sum(v) / len(v) for p, v in best.items()}
    p = min(max(mean["none"], 1.0), 99.0) / 100
    noise = 200 * math.sqrt(p * (1 - p) / val_videos)  # two binomial standard errors, in points
    saving = {pr: 1 - spent[pr] / spent["none"] if spent["none"] else float("nan") for pr in PRUNERS}
    result.checks = [
        Check("trial-epochs saved by asha", saving["asha"], ">=", 0.40, unit=""),
        Check(
            "best top-1 shortfall with asha (points, mean over seeds)",
            mean["none"] - mean["asha"],
            "<=",
            noise,
            "",
        ),
    ]
    result.notes = [
        f"studies/cpu/lr_prune.yaml: random sampler, seeds {seeds}, {trials} trials of {epochs} epochs each, "
        f"AdamW lr 1e-5..1e-1 (log); asha on the per-epoch kNN top-1 (min_resource 1, reduction factor 3), "
        f"median after 1 warm-up epoch"
        + (", tiny data and model (quick size)" if quick else "")
        + f"; data in {root}. Seed noise of the top-1 on {val_videos} validation videos: 2 SE = {noise:.1f} points.",
        "Trial-epochs over all seeds: "
        + ", ".join(f"{pr} {spent[pr]} ({100 * saving[pr]:.0f}% saved)" for pr in PRUNERS)
        + "; best top-1 mean over seeds: "
        + ", ".join(f"{pr} {mean[pr]:.1f}" for pr in PRUNERS)
        + ".",
    ]
    return result
