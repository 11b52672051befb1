"""ρSwAV: online clustering; each clip predicts the Sinkhorn cluster codes of the video's other clips.

Embeddings are scored against L2-normalised prototypes; the codes of the "code" clips come
from Sinkhorn-Knopp equipartition over the (global) batch, and every other clip predicts
them with a softmax over its own scores (Caron et al. 2020; ρ clips as in Feichtenhofer et
al. 2021: codes from the first two clips, swapped prediction from all clips).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.distributed import all_reduce_max, all_reduce_sum, world_size
from methods._checks import check_choice, check_positive
from methods._heads import MLPHead
from methods._memory import MEMORY_MODES, coupled_loss
from methods._metrics import embedding_std
from methods._pairs import LOSS_REDUCTIONS, other_clips
from methods._precision import in_fp32
from methods._queue import KeyQueue
from methods.base import SSLMethod, StepOutput

CODE_SOURCES = ("first_two", "all")


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft cluster assignments with equal cluster sizes over the batch (Sinkhorn-Knopp).

    Q = exp(scores / epsilon), transposed to [K, B], is scaled alternately so that every
    prototype's row sums to 1/K and every sample's column to 1/B (the equipartition
    constraint of SwAV), ``iterations`` times; finally each sample's code is normalised to
    sum to 1. With several ranks the sums run over the global batch (all-reduced), so the
    codes equal those of one process holding all ranks' samples. No gradient.

    Args:
        scores: similarities of samples to prototypes [B, K] (this rank's samples).
        epsilon: entropic regularisation; smaller gives harder codes.
        iterations: alternating normalisation rounds (the marginals converge as it grows).

    Returns:
        Codes [B, K] in float32 (or the scores' dtype if wider), each row summing to 1.
    """
    scores = scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    shift = all_reduce_max(scores.max())  # exact: cancelled by the first normalisation
    codes = torch.exp((scores - shift) / epsilon).T
    codes /= all_reduce_sum(codes.sum())
    num_prototypes, total_samples = codes.shape[0], codes.shape[1] * world_size()
    for _ in range(iterations):
        codes /= all_reduce_sum(codes.sum(dim=1, keepdim=True)) * num_prototypes
        codes /= codes.sum(dim=0, keepdim=True) * total_samples
    return (codes / codes.sum(dim=0, keepdim=True)).T


def swapped_prediction_loss(scores: Tensor, codes: Tensor, temperature: float = 0.1) -> Tensor:
    """Cross-entropy of each code clip's codes against every other clip's softmax prediction.

    ``loss = mean over (c, v != c) of mean_n -sum_k codes[n, c, k] * log softmax(scores[n, v] / τ)_k``
    for the C code clips c (the first C of the V clips).

    Args:
        scores: similarities to the prototypes [N, V, K] of all V clips.
        codes: targets [N, C, K] (rows sum to 1) of clips 0..C-1, C <= V.
        temperature: τ of the prediction softmax.

    Returns:
        Scalar loss.
    """
    log_probs = F.log_softmax(scores / temperature, dim=-1)
    losses = [
        -(codes[:, code_clip] * log_probs[:, clip]).sum(dim=-1).mean()
        for code_clip in range(codes.shape[1])
        for clip in other_clips(code_clip, scores.shape[1])
    ]
    return torch.stack(losses).mean()


class SwAV(SSLMethod):
    """ρSwAV: backbone -> MLP projector -> normalised embedding -> prototype scores -> swapped prediction.

    Args:
        backbone, feature_dim: see ``SSLMethod``.
        temperature: τ of the prediction softmax (paper: 0.1).
        hidden_dims: projector hidden widths (BatchNorm, ReLU); SlowFast's SwAV_Slow_R50_8x8:
            2048-2048 (NUM_MLP_LAYERS 3, BN_MLP), output 128.
        out_dim: embedding width.
        num_prototypes: K (paper: 1000; CPU studies use fewer).
        epsilon, sinkhorn_iterations: Sinkhorn parameters (0.05, 3).
        freeze_prototypes_epochs: the prototypes get no gradient during the first this many
            epochs (SwAV's stabiliser; their ``.grad`` stays None, so no optimizer moves them).
        codes_from: ``"first_two"`` clips give the codes (paper) or ``"all"`` of them.
        loss_reduction: ``"mean"`` or ``"slowfast"``; both are the mean over (code clip, other
            clip) pairs, which is what SlowFast's (non-sequential) SwAV computes
            (``methods._pairs``): the key exists so that every method takes it.
        queue_size: per rank, this many past embeddings (0: none) are added to the batch
            for Sinkhorn once the queue is full, for small batches; one queue shared by the
            code clips. It fills from epoch ``queue_start_epoch`` on.
        queue_start_epoch: the epoch from which the queue fills (and, once full, is used).
        memory: ``"standard"``, or ``"low"``: gradient caching (``methods._memory``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.1,
        hidden_dims: Sequence[int] = (2048,),
        out_dim: int = 128,
        num_prototypes: int = 1000,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_epochs: int = 1,
        codes_from: str = "first_two",
        loss_reduction: str = "mean",
        queue_size: int = 0,
        queue_start_epoch: int = 15,
        memory: str = "standard",
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.temperature = check_positive("temperature", temperature)
        self.epsilon = check_positive("epsilon", epsilon)
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.codes_from = check_choice("codes_from", codes_from, CODE_SOURCES)
        self.loss_reduction = check_choice("loss_reduction", loss_reduction, LOSS_REDUCTIONS)
        self.queue_start_epoch = queue_start_epoch
        self.memory = check_choice("memory", memory, MEMORY_MODES)
        self.head = MLPHead(feature_dim, hidden_dims, out_dim, batch_norm=True)
        self.prototypes = nn.Linear(out_dim, num_prototypes, bias=False)
        self.queue = KeyQueue(queue_size, out_dim) if queue_size > 0 else None
        self.epoch = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def prototypes_frozen(self) -> bool:
        """True during the first ``freeze_prototypes_epochs`` epochs (set by ``on_epoch_start``)."""
        return self.epoch < self.freeze_prototypes_epochs

    def _embed(self, clip: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(clip)), dim=-1)

    @torch.no_grad()
    def _codes(self, scores: Tensor, prototypes: Tensor) -> Tensor:
        """Sinkhorn codes [B, K] of one clip's scores [B, K], with the queue's samples when it is in use."""
        batch = scores.shape[0]
        if self.queue is not None and self.epoch >= self.queue_start_epoch and self.queue.is_full:
            scores = torch.cat([self.queue.keys @ prototypes.T, scores])
        return sinkhorn(scores, self.epsilon, self.sinkhorn_iterations)[-batch:]

    def _loss(self, z: Tensor) -> tuple[Tensor, dict[str, float]]:
        prototypes = self.prototypes.weight
        if self.prototypes_frozen:
            prototypes = prototypes.detach()
        scores = z @ prototypes.T
        num_code_clips = 2 if self.codes_from == "first_two" else z.shape[1]
        codes = torch.stack([self._codes(scores[:, c], prototypes) for c in range(num_code_clips)], dim=1)
        loss = swapped_prediction_loss(scores, codes, self.temperature)
        if self.queue is not None and self.epoch >= self.queue_start_epoch:
            self.queue.enqueue(z[:, :num_code_clips].detach().transpose(0, 1).reshape(-1, z.shape[-1]))
        metrics = {
            "loss": loss.item(),
            "embedding_std": embedding_std(z),
            "prototypes_used": float(codes.argmax(dim=-1).unique().numel()),
        }
        return loss, metrics

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"]
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        return StepOutput(
            *coupled_loss(  # scores, Sinkhorn and softmax in float32 under autocast (methods._precision)
                self._embed, clips, lambda z: in_fp32(self._loss, z), (self.backbone, self.head), self.memory
            )
        )
