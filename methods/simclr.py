"""ρSimCLR: the NT-Xent contrastive loss between clips of one video, the rest of the global batch as negatives.

Each clip's embedding has the other clip of its pair as positive and every other embedding of
the pair's two clips in the global batch as negatives (Chen et al. 2020; Feichtenhofer et al.
2021 use ρ clips: the ρ-clip loss combines the two-clip loss over clip pairs, by their mean or,
as SlowFast does, their sum; see ``methods._pairs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.distributed import all_gather_no_grad, gather_with_grad, rank
from methods._checks import check_choice, check_positive
from methods._heads import MLPHead
from methods._memory import MEMORY_MODES, coupled_loss
from methods._metrics import embedding_std
from methods._pairs import LOSS_REDUCTIONS, PAIR_MODES, clip_pairs, pair_weight
from methods._precision import in_fp32
from methods.base import SSLMethod, StepOutput


def _pair_logits(z: Tensor, z_all: Tensor, a: int, b: int, offset: int) -> tuple[Tensor, Tensor]:
    """Similarities of clip pair (a, b)'s 2N local anchors to its 2M candidates, self masked out.

    Args:
        z: normalised local embeddings [N, V, D].
        z_all: normalised embeddings of the global batch [M, V, D] (M = N in one process).
        a, b: the pair's clip indices.
        offset: where the local samples start in ``z_all`` (rank * N when gathered).

    Returns:
        Cosine similarities [2N, 2M] (anchors: clip a's N then clip b's N; candidates: clip
        a's M then clip b's M), each anchor's own column set to -inf, and the column of each
        anchor's positive [2N].
    """
    n, m = z.shape[0], z_all.shape[0]
    anchors = torch.cat([z[:, a], z[:, b]])
    candidates = torch.cat([z_all[:, a], z_all[:, b]])
    local = torch.arange(n, device=z.device) + offset
    own = torch.cat([local, local + m])
    positive = torch.cat([local + m, local])
    similarity = anchors @ candidates.T
    self_mask = F.one_hot(own, 2 * m).bool()
    return similarity.masked_fill(self_mask, float("-inf")), positive


def nt_xent_loss(
    z: Tensor,
    temperature: float = 0.1,
    pairs: str = "all",
    gather_distributed: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """NT-Xent over ρ clips: the mean (or sum) over clip pairs of the two-clip SimCLR loss.

    For a pair of clips, each of the 2N embeddings i is scored against its positive p (the
    same video's other clip) among all 2N−1 other embeddings of the two clips:
    ``l_i = -log(exp(s_ip / τ) / sum_{k != i} exp(s_ik / τ))`` with cosine similarity s;
    the two-clip loss is the mean of l_i over the 2N anchors. Embeddings are L2-normalised
    here, so pass raw projections.

    Args:
        z: projections [N, V, D] of N videos' V >= 2 clips.
        temperature: τ.
        pairs: ``"all"`` clip pairs or ``"adjacent"`` ones (k, k+1) (see ``clip_pairs``).
        gather_distributed: with several ranks, the candidates are the global batch
            (gathered with gradient, ``harness.distributed.gather_with_grad``) and the anchors
            this rank's N videos, so 2N becomes 2·world_size·N in the formula above;
            otherwise each rank contrasts within its own batch.
        reduction: ``"mean"`` over the pairs, or ``"slowfast"``: their sum (SlowFast's
            sequential SimCLR back-propagates each pair's loss on its own).

    Returns:
        Scalar loss, averaged over this rank's anchors and averaged (or summed) over the pairs.
    """
    z = F.normalize(z, dim=-1)
    z_all = gather_with_grad(z) if gather_distributed else z
    offset = rank() * z.shape[0] if gather_distributed else 0
    losses = []
    selected = clip_pairs(z.shape[1], pairs)
    for a, b in selected:
        similarity, positive = _pair_logits(z, z_all, a, b, offset)
        losses.append(F.cross_entropy(similarity / temperature, positive))
    return torch.stack(losses).sum() * pair_weight(len(selected), reduction)


@torch.no_grad()
def positive_accuracy(z: Tensor, pairs: str = "all", gather_distributed: bool = True) -> float:
    """Fraction of anchors whose most similar candidate is their positive (same pairs/candidates as the loss)."""
    z = F.normalize(z, dim=-1)
    z_all = all_gather_no_grad(z) if gather_distributed else z
    offset = rank() * z.shape[0] if gather_distributed else 0
    hits = [
        (similarity.argmax(dim=1) == positive).float().mean()
        for similarity, positive in (
            _pair_logits(z, z_all, a, b, offset) for a, b in clip_pairs(z.shape[1], pairs)
        )
    ]
    return torch.stack(hits).mean().item()


class SimCLR(SSLMethod):
    """ρSimCLR: backbone -> MLP projector -> NT-Xent between the clips of each video.

    Args:
        backbone, feature_dim: see ``SSLMethod``.
        temperature: NT-Xent τ (paper: 0.1).
        hidden_dims: projector hidden widths (paper: 2048-2048, output 128).
        out_dim: projection width.
        head_batch_norm: BatchNorm1d in the projector's hidden layers (SlowFast's
            SimCLR_SlowR50_8x8 has none: BN_MLP unset, False).
        pairs: clip pairs for ρ > 2: ``"all"`` or ``"adjacent"`` (see ``nt_xent_loss``;
            SlowFast: adjacent).
        loss_reduction: ``"mean"`` over the pairs or ``"slowfast"``: their sum (``methods._pairs``).
        gather_distributed: negatives from all ranks (see ``nt_xent_loss``).
        memory: ``"standard"``, or ``"low"``: gradient caching (``methods._memory``), the
            backward pass done inside ``training_step`` one clip at a time.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.1,
        hidden_dims: Sequence[int] = (2048, 2048),
        out_dim: int = 128,
        head_batch_norm: bool = True,
        pairs: str = "all",
        loss_reduction: str = "mean",
        gather_distributed: bool = True,
        memory: str = "standard",
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.temperature = check_positive("temperature", temperature)
        self.pairs = check_choice("pairs", pairs, PAIR_MODES)
        self.loss_reduction = check_choice("loss_reduction", loss_reduction, LOSS_REDUCTIONS)
        self.gather_distributed = gather_distributed
        self.memory = check_choice("memory", memory, MEMORY_MODES)
        self.head = MLPHead(feature_dim, hidden_dims, out_dim, batch_norm=head_batch_norm)

    def _embed(self, clip: Tensor) -> Tensor:
        return self.head(self.backbone(clip))

    def _loss(self, z: Tensor) -> tuple[Tensor, dict[str, float]]:
        loss = nt_xent_loss(z, self.temperature, self.pairs, self.gather_distributed, self.loss_reduction)
        metrics = {
            "loss": loss.item(),
            "positive_accuracy": positive_accuracy(z, self.pairs, self.gather_distributed),
            "embedding_std": embedding_std(z),
        }
        return loss, metrics

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"]
        return StepOutput(
            *coupled_loss(  # the loss in float32 under autocast, as SlowFast (methods._precision)
                self._embed, clips, lambda z: in_fp32(self._loss, z), (self.backbone, self.head), self.memory
            )
        )
