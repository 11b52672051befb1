"""The interface every method implements, and what one training step returns.

How the engine drives a method, one step::

    optimizer.zero_grad(set_to_none=True)
    out = method.training_step(batch)        # batch: clips [B, V, C, T, H, W], label [B], index [B]
    if not out.backward_done:
        out.loss.backward()
    harness.distributed.average_gradients(method.parameters())   # several ranks only
    optimizer.step()
    method.on_step_end(progress)             # progress in [0, 1]: momentum schedules, EMA updates

and ``method.on_epoch_start(epoch)`` before each epoch's first step.

Low-memory mode (``memory="low"`` on the methods that offer it): ``training_step`` runs the
backward pass itself, clip by clip, so that activation memory does not grow with the number
of clips, and returns ``StepOutput(loss.detach(), metrics, backward_done=True)``. The
gradients it leaves in ``.grad`` equal those of ``loss.backward()`` in standard mode. It
accumulates into ``.grad``, so the engine zeroes gradients before the step, as usual; and it
back-propagates the unscaled loss, so use bf16 autocast, not fp16 with a GradScaler.

Several ranks: don't wrap the method in DistributedDataParallel (low-memory mode runs several
backward passes per step, SwAV leaves its prototypes without gradient in the first epoch, and
queues are per-rank buffers that DDP would overwrite with rank 0's); the ranks' copies stay
in step through ``harness.distributed.broadcast_state`` once and ``average_gradients`` every
step. Losses that need the global batch gather it themselves (``harness.distributed``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn


@dataclass
class StepOutput:
    """What ``SSLMethod.training_step`` returns.

    Attributes:
        loss: the step's scalar loss; detached when ``backward_done``.
        metrics: floats to log (always ``loss``; per method e.g. positive-pair accuracy,
            momentum, embedding std as a collapse monitor).
        backward_done: True when the method already back-propagated the loss into ``.grad``
            (low-memory mode); the engine must then not call ``loss.backward()``.
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    backward_done: bool = False


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups of ``module``: weights decay, biases and norm parameters don't.

    Parameters with ``ndim <= 1`` (biases, BatchNorm/LayerNorm affine) get weight decay 0
    and ``lars_exclude: True`` so that LARS skips its trust-ratio adaptation for them, as
    in SimCLR/BYOL. Parameters that don't require grad (momentum/target encoders, which
    move only by EMA) are left out. Empty groups are omitted.
    """
    decay, no_decay = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [group for group in groups if group["params"]]


class SSLMethod(nn.Module, ABC):
    """A (self-)supervised training objective around a video backbone.

    Args:
        backbone: clips [B, C, T, H, W] -> pooled features [B, feature_dim]; what evaluation
            uses afterwards (``encoder``).
        feature_dim: the backbone's output width, which the method's heads take as input.

    Class attributes:
        uses_labels: the method reads ``batch["label"]`` (supervised), so the engine must not
            hand it unlabeled data.
        trainable: False for methods with nothing to train (random init): the engine skips
            pre-training and evaluates ``encoder`` as built.
        min_clips: the fewest clips V per video a step takes: 2 for the methods that compare
            clips (ρ = 1 then gives two augmentations of one clip), 1 for those that take each
            clip on its own (VideoMAE: the engine hands them V = ρ clips, ρ = 1 included).
        needs_tokens: the method needs a backbone that gives tokens (``harness.vit``'s token API:
            the ViTs), as the masked methods do; it refuses any other at construction.
    """

    uses_labels: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    min_clips: ClassVar[int] = 2
    needs_tokens: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim

    @property
    def encoder(self) -> nn.Module:
        """The backbone: the network whose features evaluation measures."""
        return self.backbone

    @abstractmethod
    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        """Compute one step's loss (and, in low-memory mode, its gradients; see the module doc).

        Args:
            batch: ``clips`` float [B, V, C, T, H, W] with V >= ``min_clips`` clips of each video,
                ``label`` long [B], ``index`` long [B].
        """

    @property
    def clips_needed(self) -> int:
        """The fewest clips per video (``data.clips``, ρ) this method, as configured, needs: 1 for
        the built-in ones (at ρ = 1 the pairwise methods take two views of one clip); ``vjepa``
        with ``cross_clip``, 2. Checked before any compute (``harness.train.build_method``)."""
        return 1

    def on_step_end(self, progress: float) -> None:
        """Called after ``optimizer.step()``; ``progress`` in [0, 1] is the fraction of training done."""

    def updates_weights(self, step: int) -> bool:
        """Whether the optimizer steps after global step ``step`` (0-based) (its loss and gradients
        are computed either way, and ``on_step_end`` runs either way). True but for ρMoCo's
        ``no_update_steps``."""
        return True

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of epoch ``epoch`` (0-based)."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: weights decay, biases and norm parameters don't (``weight_decay_groups``)."""
        return weight_decay_groups(self, weight_decay)
