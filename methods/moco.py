"""ρMoCo: each clip's query matches the momentum encoder's keys of the video's other clips, against a queue.

InfoNCE with the other clips' keys as positives and a FIFO queue of past keys as negatives;
the key encoder is an EMA of the query encoder (He et al. 2020, MoCo v2 head; ρ clips and
the cosine momentum schedule 0.994 -> 1 as in Feichtenhofer et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.distributed import (
    all_gather_no_grad,
    broadcast_state,
    shuffle_batch,
    unshuffle_batch,
    world_size,
)
from methods._checks import check_choice, check_positive
from methods._ema import ema_step, momentum_copy
from methods._heads import MLPHead
from methods._memory import MEMORY_MODES, clip_loss, embed_clips
from methods._metrics import embedding_std
from methods._pairs import LOSS_REDUCTIONS, ordered_pairs, other_clips, query_weight
from methods._precision import in_fp32
from methods._queue import KeyQueue
from methods.base import SSLMethod, StepOutput


def info_nce_loss(
    q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.1, excluded: Tensor | None = None
) -> Tensor:
    """InfoNCE: each query's own key against the queue's K negatives.

    ``l_i = -log(exp(q_i·k_i / τ) / (exp(q_i·k_i / τ) + sum_j exp(q_i·n_j / τ)))``, averaged
    over i; a (K+1)-way classification with the positive at index 0.

    Args:
        q: L2-normalised queries [N, D].
        k: L2-normalised positive keys [N, D] (no gradient is needed through them).
        queue: negatives [K, D].
        temperature: τ.
        excluded: [N, K] True where a queue entry is not a negative of that query (a key of the
            query's own video); those terms leave the sum.

    Returns:
        Scalar loss.
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.T
    if excluded is not None:
        negative = negative.masked_fill(excluded, float("-inf"))
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCo(SSLMethod):
    """ρMoCo: query encoder (backbone + MLP) trained by SGD, key encoder its EMA, a queue of keys.

    Args:
        backbone, feature_dim: see ``SSLMethod``.
        temperature: InfoNCE τ (paper: 0.1).
        hidden_dims, out_dim: projector widths (SlowFast's MoCo_SlowR50_8x8: 2048-2048 hidden,
            NUM_MLP_LAYERS 3, 128 out).
        head_batch_norm: BatchNorm in the projector (MoCo v2: none).
        queue_size: number of negatives K (paper: 65536). All ρ keys of each video go in.
        exclude_same_video: a query's own video's keys in the queue (its clips from earlier
            epochs) are not its negatives (SlowFast keeps them: False). They are what ρ ≥ 2 teaches it to match: kept as
            negatives, they contradict the objective whenever the queue spans more than a small
            part of an epoch (2048 keys over 320 videos: about 6 per video).
        queue_per_rank: SlowFast's queue: each rank enqueues only its own keys, and at the
            start of every step rank 0's queue is copied to all ranks (what DDP's
            ``broadcast_buffers`` does to SlowFast's ``queue_x`` buffer each forward), so every
            rank's negatives are rank 0's last K keys: K / (ρ·per-rank batch) steps of one
            rank's videos. By default (False) every rank enqueues the keys of all ranks
            (all-gathered), so all hold the same global queue of the last K keys of the
            global batch (MoCo's own design). One process: the two are the same.
        momentum: base EMA momentum, annealed to 1 by a cosine over training.
        shuffle_bn: shuffle the key encoder's batch across ranks (no-op in one process).
        loss_reduction: ``"mean"`` over the ρ(ρ−1) (query, key) pairs, or ``"slowfast"``: each
            query clip's InfoNCE averaged over the other clips' keys, summed over the ρ query
            clips, ρ times the mean (``methods._pairs``).
        memory: ``"standard"``, or ``"low"``: keys first without grad, then each query clip
            forwarded and back-propagated on its own inside ``training_step``.
        no_update_steps: the weights are not updated during the first this many steps, while
            the queue fills with real keys: an int >= 0 (None: 0), or ``"slowfast"``:
            queue_size // the global batch of videos (SlowFast's ``iters_noupdate``).
        rank_videos: emulate SlowFast's GPUs of this many videos (its 8) on a rank that holds
            more: the query and key encoders forward each clip in sub-batches of ``rank_videos``
            (so BatchNorm normalises over that many, as SlowFast's per-GPU BN), and with
            ``queue_per_rank`` a rank enqueues the keys of its first ``rank_videos`` videos only
            (so rank 0's queue spans K / (ρ·rank_videos) steps, as SlowFast's). None: the whole
            per-rank batch, as before.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.1,
        hidden_dims: Sequence[int] = (2048,),
        out_dim: int = 128,
        head_batch_norm: bool = False,
        queue_size: int = 65536,
        queue_per_rank: bool = False,
        exclude_same_video: bool = True,
        momentum: float = 0.994,
        shuffle_bn: bool = True,
        loss_reduction: str = "mean",
        memory: str = "standard",
        no_update_steps: int | str | None = None,
        rank_videos: int | None = None,
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.temperature = check_positive("temperature", temperature)
        no_update_steps = 0 if no_update_steps is None else no_update_steps
        valid_count = isinstance(no_update_steps, int) and not isinstance(no_update_steps, bool)
        if not (no_update_steps == "slowfast" or (valid_count and no_update_steps >= 0)):
            raise ValueError(
                f"no_update_steps={no_update_steps!r}: an int >= 0, or 'slowfast' "
                "(queue_size // the global batch of videos, SlowFast's iters_noupdate)"
            )
        self.no_update_steps = no_update_steps
        self.rank_videos = None if rank_videos is None else int(check_positive("rank_videos", rank_videos))
        self.videos_per_step: int | None = None  # the global batch, seen at the first step
        self.queue_per_rank = queue_per_rank
        self.exclude_same_video = exclude_same_video
        self.base_momentum = momentum
        self.momentum = momentum
        self.shuffle_bn = shuffle_bn
        self.loss_reduction = check_choice("loss_reduction", loss_reduction, LOSS_REDUCTIONS)
        self.memory = check_choice("memory", memory, MEMORY_MODES)
        self.head = MLPHead(feature_dim, hidden_dims, out_dim, batch_norm=head_batch_norm)
        self.target_backbone = momentum_copy(backbone)
        self.target_head = momentum_copy(self.head)
        self.queue = KeyQueue(queue_size, out_dim)

    def _per_gpu(self, encode: Callable[[Tensor], Tensor], clip: Tensor) -> Tensor:
        """``encode(clip)``, in sub-batches of ``rank_videos`` (SlowFast's per-GPU BatchNorm) when set."""
        if self.rank_videos is None or clip.shape[0] <= self.rank_videos:
            return encode(clip)
        return torch.cat([encode(part) for part in clip.split(self.rank_videos)])

    def _query(self, clip: Tensor) -> Tensor:
        return F.normalize(self._per_gpu(lambda x: self.head(self.backbone(x)), clip), dim=-1)

    @torch.no_grad()
    def _key(self, clip: Tensor) -> Tensor:
        permutation = None
        if self.shuffle_bn:
            clip, permutation = shuffle_batch(clip)
        key = F.normalize(self._per_gpu(lambda x: self.target_head(self.target_backbone(x)), clip), dim=-1)
        return unshuffle_batch(key, permutation)

    @torch.no_grad()
    def enqueue_keys(self, keys: Tensor, videos: Tensor | None = None) -> None:
        """Put keys [N, V, D] of videos [N] into the queue, clip by clip: this rank's, or all ranks' in rank order."""
        if not self.queue_per_rank:
            keys = all_gather_no_grad(keys)
            videos = all_gather_no_grad(videos) if videos is not None else None
        elif self.rank_videos is not None:  # one SlowFast GPU's videos: its queue's span
            keys = keys[: self.rank_videos]
            videos = videos[: self.rank_videos] if videos is not None else None
        num_clips = keys.shape[1]
        self.queue.enqueue(
            keys.transpose(0, 1).reshape(-1, keys.shape[-1]),
            videos.repeat(num_clips) if videos is not None else None,
        )

    def updates_weights(self, step: int) -> bool:
        """False for the first ``no_update_steps`` steps: the weights wait while the queue fills
        with real keys (SlowFast's ``contrastive_parameter_surgery``: ``iters_noupdate`` =
        QUEUE_LEN // TRAIN.BATCH_SIZE // NUM_SHARDS, the queue over the global batch, in epoch 0)."""
        hold = self.no_update_steps
        if hold == "slowfast":
            hold = self.queue.keys.shape[0] // max(1, self.videos_per_step or 1)
        return step >= hold

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"]
        num_clips = clips.shape[1]
        self.videos_per_step = clips.shape[0] * world_size()
        if self.queue_per_rank:
            broadcast_state(self.queue)  # rank 0's queue everywhere, as DDP broadcasts buffers
        keys = embed_clips(self._key, clips)
        negatives = self.queue.keys.clone()
        videos = batch.get("index")
        excluded = None
        if videos is not None:
            videos = torch.as_tensor(videos, device=self.queue.videos.device).long()
            if self.exclude_same_video:
                excluded = videos[:, None] == self.queue.videos[None, :]
        weight = query_weight(num_clips, self.loss_reduction)
        total, queries = 0.0, []
        for clip in range(num_clips):
            q = self._query(clips[:, clip])
            loss = sum(  # logits over the queue in float32 under autocast (methods._precision)
                in_fp32(info_nce_loss, q, keys[:, t], negatives, self.temperature, excluded)
                for t in other_clips(clip, num_clips)
            )
            total = total + clip_loss(loss * weight, self.memory)
            queries.append(q.detach())
        self.enqueue_keys(keys, videos)
        queries = torch.stack(queries, dim=1)
        metrics = {
            "loss": total.item(),
            "positive_accuracy": _positive_accuracy(queries, keys, negatives, excluded),
            "momentum": self.momentum,
            "embedding_std": embedding_std(queries),
        }
        return StepOutput(total, metrics, backward_done=self.memory == "low")

    def on_step_end(self, progress: float) -> None:
        pairs = ((self.backbone, self.target_backbone), (self.head, self.target_head))
        self.momentum = ema_step(pairs, self.base_momentum, progress)


@torch.no_grad()
def _positive_accuracy(
    queries: Tensor, keys: Tensor, negatives: Tensor, excluded: Tensor | None = None
) -> float:
    """Fraction of (query, other clip's key) pairs where the key beats every negative; inputs [N, V, D], [K, D]."""
    hits = []
    for query, target in ordered_pairs(queries.shape[1]):
        positive = (queries[:, query] * keys[:, target]).sum(dim=1)
        similarity = queries[:, query] @ negatives.T
        if excluded is not None:
            similarity = similarity.masked_fill(excluded, float("-inf"))
        hardest_negative = similarity.max(dim=1).values
        hits.append((positive > hardest_negative).float().mean())
    return torch.stack(hits).mean().item()
