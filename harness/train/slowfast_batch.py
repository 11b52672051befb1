"""How a run's per-rank batch compares with SlowFast's: BatchNorm group and ρMoCo queue span.

SlowFast's contrastive_ssl configs hold 8 videos per GPU (TRAIN.BATCH_SIZE 64 over NUM_GPUS 8;
the paper's 512 videos over 64 GPUs). Only two things in our methods depend on the per-rank
batch (the losses of ρSimCLR and ρSwAV and ρBYOL's regression are computed over the global
batch or per sample): the videos a BatchNorm normalises over, and, with ρMoCo's per-rank queue,
how many steps its 65536 keys span. A study trial runs on one machine (docs/scaling-out.md), so
512 videos on 8 GPUs are 64 per GPU; ``slowfast_batch_note`` says, in one line, where that
changes what SlowFast computes, and which switch reproduces it.
"""

from __future__ import annotations

from harness.config import Experiment

SLOWFAST_RANK_VIDEOS = 8  # TRAIN.BATCH_SIZE 64 / NUM_GPUS 8
SLOWFAST_BN_VIDEOS = {  # videos per BatchNorm group in each method's config
    "byol": 64,  # BN.NUM_SYNC_DEVICES 8 x 8 videos (BYOL_SlowR50_8x8.yaml:50-51, BN_SYNC_MLP)
    "simclr": 64,  # SimCLR_SlowR50_8x8.yaml:44-45
    "swav": 64,  # SwAV_Slow_R50_8x8.yaml:43-44
    "moco": 8,  # NORM_TYPE unset: per-GPU BN (MoCo_SlowR50_8x8.yaml has no BN sync)
}


def bn_videos(experiment: Experiment, world_size: int, local_batch: int) -> int:
    """The videos one BatchNorm of a clip's forward normalises over."""
    per_forward = local_batch
    rank_videos = experiment.method.params.get("rank_videos")
    if experiment.method.name == "moco" and rank_videos:
        per_forward = min(local_batch, rank_videos)
    backbone = experiment.backbone
    ranks = (backbone.sync_bn_group or world_size) if backbone.sync_bn and world_size > 1 else 1
    return per_forward * min(ranks, world_size)


def moco_queue_span_steps(experiment: Experiment, world_size: int, local_batch: int) -> float:
    """Steps of keys ρMoCo's queue holds: K / keys enqueued per step (rank 0's, or all ranks')."""
    params = experiment.method.params
    queue = params.get("queue_size", 65536)
    videos = local_batch if params.get("queue_per_rank") else local_batch * world_size
    if params.get("queue_per_rank") and params.get("rank_videos"):
        videos = min(videos, params["rank_videos"])
    return queue / (videos * experiment.data.clips)


def slowfast_batch_note(
    experiment: Experiment, world_size: int, local_batch: int, steps_per_epoch: int
) -> str | None:
    """One line naming where the per-rank batch makes this run differ from SlowFast's, or None.

    Only for the four contrastive methods; the per-rank batch itself is named for context.
    """
    method = experiment.method.name
    if method not in SLOWFAST_BN_VIDEOS:
        return None
    parts = []
    bn, slowfast_bn = bn_videos(experiment, world_size, local_batch), SLOWFAST_BN_VIDEOS[method]
    if bn != slowfast_bn:
        fix = "method.rank_videos: 8, backbone.sync_bn: false" if method == "moco" else "backbone.sync_bn"
        parts.append(f"BatchNorm over {bn} videos (SlowFast {slowfast_bn}; see {fix})")
    if method == "moco":
        params = experiment.method.params
        span = moco_queue_span_steps(experiment, world_size, local_batch)
        slowfast_span = params.get("queue_size", 65536) / (SLOWFAST_RANK_VIDEOS * experiment.data.clips)
        if not params.get("queue_per_rank") or round(span) != round(slowfast_span):
            epochs = max(steps_per_epoch, 1)
            parts.append(
                f"MoCo queue spans {span:.0f} steps = {span / epochs:.2f} epochs "
                f"(SlowFast: rank 0's last {params.get('queue_size', 65536)} keys, {slowfast_span:.0f} "
                f"steps of 8 videos = {slowfast_span / epochs:.2f} epochs at this global batch; "
                "method.queue_per_rank: true, method.rank_videos: 8)"
            )
    if not parts:
        return None
    return (
        f"per-rank batch {local_batch} videos (SlowFast {SLOWFAST_RANK_VIDEOS} per GPU): "
        + "; ".join(parts)
        + " -- docs/fidelity.md, rows 5a and 6d"
    )
