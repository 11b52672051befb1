"""ρBYOL: each clip's prediction regresses the target network's projections of the video's other clips.

No negatives: an online network (backbone, projector, predictor) predicts the projection
that a slowly moving EMA target network (backbone, projector) gives another clip
(Grill et al. 2020; ρ clips and EMA 0.996 -> 1 as in Feichtenhofer et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods._checks import check_choice, check_positive
from methods._ema import ema_step, momentum_copy
from methods._heads import MLPHead
from methods._memory import MEMORY_MODES, clip_loss, embed_clips
from methods._metrics import embedding_std
from methods._pairs import LOSS_REDUCTIONS, other_clips, query_weight
from methods._precision import in_fp32
from methods.base import SSLMethod, StepOutput


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised MSE: ``mean_i ||p_i/|p_i| - z_i/|z_i| ||^2 = mean_i (2 - 2 cos(p_i, z_i))``.

    Args:
        p: online predictions [N, D] (normalised here).
        z: target projections [N, D] (normalised here; pass them without gradient).

    Returns:
        Scalar loss in [0, 4].
    """
    return (2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1)).mean()


class BYOL(SSLMethod):
    """ρBYOL: online backbone -> projector -> predictor regresses the EMA target's projections.

    Args:
        backbone, feature_dim: see ``SSLMethod``.
        projector_hidden_dims, out_dim: projector widths (paper: 4096 with BN and ReLU, 256 out).
        predictor_hidden_dims: predictor hidden widths (paper: 256 -> 4096 -> 256).
        momentum: base EMA momentum of the target, annealed to 1 by a cosine over training.
        predictor_lr_scale: the predictor's learning rate as a multiple of the schedule's (1: the
            paper's). A predictor that adapts faster than the encoders it sits between is what
            keeps BYOL from collapsing (Tian et al. 2021, DirectPred; SimSiam keeps its lr fixed).
        loss_reduction: ``"mean"`` over the ρ(ρ−1) (clip, other clip) pairs, or ``"slowfast"``:
            each clip's mean over the other clips, summed over clips, ρ times the mean
            (``methods._pairs``). SlowFast's ``sim_loss`` is −2·cos, ours 2 − 2·cos: the same
            gradient, the loss shifted by a constant.
        memory: ``"standard"``, or ``"low"``: targets first without grad, then each online
            clip forwarded and back-propagated on its own inside ``training_step``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector_hidden_dims: Sequence[int] = (4096,),
        out_dim: int = 256,
        predictor_hidden_dims: Sequence[int] = (4096,),
        momentum: float = 0.996,
        predictor_lr_scale: float = 1.0,
        loss_reduction: str = "mean",
        memory: str = "standard",
    ) -> None:
        super().__init__(backbone, feature_dim)
        self.predictor_lr_scale = check_positive("predictor_lr_scale", predictor_lr_scale)
        self.base_momentum = momentum
        self.momentum = momentum
        self.loss_reduction = check_choice("loss_reduction", loss_reduction, LOSS_REDUCTIONS)
        self.memory = check_choice("memory", memory, MEMORY_MODES)
        self.projector = MLPHead(feature_dim, projector_hidden_dims, out_dim, batch_norm=True)
        self.predictor = MLPHead(out_dim, predictor_hidden_dims, out_dim, batch_norm=True)
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The base groups, with the predictor's parameters in groups of their own at ``predictor_lr_scale``."""
        if self.predictor_lr_scale == 1.0:
            return super().param_groups(weight_decay)
        predictor = {id(parameter) for parameter in self.predictor.parameters()}
        groups = []
        for group in super().param_groups(weight_decay):
            rest = [p for p in group["params"] if id(p) not in predictor]
            own = [p for p in group["params"] if id(p) in predictor]
            groups += [{**group, "params": rest}] if rest else []
            groups += [{**group, "params": own, "lr_scale": self.predictor_lr_scale}] if own else []
        return groups

    @torch.no_grad()
    def _target(self, clip: Tensor) -> Tensor:
        return self.target_projector(self.target_backbone(clip))

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"]
        num_clips = clips.shape[1]
        targets = embed_clips(self._target, clips)
        weight = query_weight(num_clips, self.loss_reduction)
        total, projections = 0.0, []
        for clip in range(num_clips):
            projection = self.projector(self.backbone(clips[:, clip]))
            prediction = self.predictor(projection)
            loss = sum(  # in float32 under autocast, as SlowFast (methods._precision)
                in_fp32(regression_loss, prediction, targets[:, t]) for t in other_clips(clip, num_clips)
            )
            total = total + clip_loss(loss * weight, self.memory)
            projections.append(projection.detach())
        metrics = {
            "loss": total.item(),
            "momentum": self.momentum,
            "embedding_std": embedding_std(torch.stack(projections, dim=1)),
        }
        return StepOutput(total, metrics, backward_done=self.memory == "low")

    def on_step_end(self, progress: float) -> None:
        pairs = ((self.backbone, self.target_backbone), (self.projector, self.target_projector))
        self.momentum = ema_step(pairs, self.base_momentum, progress)
