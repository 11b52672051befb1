"""ρVICReg, an example method plugin: variance, invariance and covariance terms over the ρ clips of each video.

Bardes et al. 2022, with ρ clips: the invariance term (mean squared distance between the
projections of two clips of a video) is averaged over every pair of clips; the variance and
covariance terms are taken per clip and averaged. No negatives, no momentum encoder.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from methods import MLPHead, SSLMethod, StepOutput


def vicreg_terms(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(invariance, variance, covariance) of projections ``z`` [N, V, D] of N videos' V >= 2 clips."""
    n, views, dim = z.shape
    invariance = torch.stack(
        [F.mse_loss(z[:, a], z[:, b]) for a, b in itertools.combinations(range(views), 2)]
    ).mean()
    centred = z - z.mean(dim=0)
    variance = F.relu(1.0 - torch.sqrt(centred.var(dim=0) + 1e-4)).mean()  # hinge on each dim's std
    covariance = torch.einsum("nvi,nvj->vij", centred, centred) / max(n - 1, 1)
    off_diagonal = covariance - torch.diag_embed(torch.diagonal(covariance, dim1=1, dim2=2))
    return invariance, variance, off_diagonal.pow(2).sum(dim=(1, 2)).mean() / dim


class VICRegExample(SSLMethod):
    """ρVICReg: backbone -> MLP expander -> invariance + variance + covariance.

    Args:
        backbone, feature_dim: see ``methods.base.SSLMethod``.
        hidden_dims: expander hidden widths (each Linear -> BatchNorm1d -> ReLU).
        out_dim: expander output width D.
        invariance_weight, variance_weight, covariance_weight: the paper's λ, μ, ν (25, 25, 1).
    """

    def __init__(
        self,
        backbone,
        feature_dim: int,
        hidden_dims: Sequence[int] = (256,),
        out_dim: int = 256,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.expander = MLPHead(feature_dim, list(hidden_dims), out_dim, batch_norm=True)
        self.weights = (invariance_weight, variance_weight, covariance_weight)

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"]  # [N, V, C, T, H, W]
        n, views = clips.shape[:2]
        z = self.expander(self.backbone(clips.flatten(0, 1))).view(n, views, -1)
        terms = vicreg_terms(z.float())
        loss = sum(weight * term for weight, term in zip(self.weights, terms, strict=True))
        metrics = {
            "loss": loss.item(),
            **{k: t.item() for k, t in zip(("invariance", "variance", "covariance"), terms, strict=True)},
        }
        return StepOutput(loss, metrics)
