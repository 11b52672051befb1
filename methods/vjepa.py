"""V-JEPA: predict the EMA target encoder's features of masked space-time blocks from the rest.

Bardes, Garrido, Ponce, Chen, Rabbat, LeCun, Assran, Ballas, "Revisiting Feature Prediction for
Learning Visual Representations from Video", 2024 (facebookresearch/jepa). Multi-block masks hide
several spatial blocks repeated over the whole clip (``multiblock_mask``); the context encoder
(the backbone, a ViT: ``harness.vit``) runs on the visible tokens only; a narrow predictor takes
them with mask tokens at the hidden positions and regresses the LayerNorm-ed features that the
EMA target encoder gives the hidden tokens of the whole, unmasked clip (L1 loss). Each mask
generator (``mask_blocks``/``mask_scales``: V-JEPA's short-range 8 blocks of 15% and long-range 2
blocks of 70%) is a prediction of its own; their losses are averaged.

ρ clips: each of the V clips of a video is a sample of its own (V = 1 works); with
``cross_clip`` (V >= 2) the targets of clip v are the target encoder's features of the video's
clip v + 1 (mod V) at the same grid positions: the hidden part of one clip is predicted in
another clip of the same video.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods._ema import ema_step, momentum_copy
from methods._precision import in_fp32
from methods._tokens import TokenDecoder, default_heads, require_tokens
from methods.base import SSLMethod, StepOutput

MAX_MASK_TRIES = 100  # redraws of a sample's blocks when they hide every position


def block_size(
    grid: tuple[int, int, int],
    scale: float,
    aspect_ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """One block's (height, width) in tokens: ``int(h*w*scale)`` positions at an aspect ratio drawn
    uniformly from ``aspect_ratio``, each side at least 1 and at most the grid's (V-JEPA's
    ``_sample_block_size`` with its temporal scale 1: blocks span the whole clip)."""
    _, h, w = grid
    area = int(h * w * scale)
    low, high = aspect_ratio
    ratio = low + torch.rand(1, generator=generator).item() * (high - low)
    return (
        min(h, max(1, round(math.sqrt(area * ratio)))),
        min(w, max(1, round(math.sqrt(area / ratio)))),
    )


def multiblock_mask(
    batch: int,
    grid: tuple[int, int, int],
    num_blocks: int,
    scale: float,
    aspect_ratio: tuple[float, float] = (0.75, 1.5),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """V-JEPA's multi-block mask (``src/masks/multiblock3d.py``): one block size per call, then per
    sample ``num_blocks`` blocks of it at uniform positions, hidden in every time slice.

    Returns:
        ``(keep, hidden)``: long [batch, N_keep] and [batch, N_hidden] token indices, ascending,
        disjoint. As in V-JEPA, every sample's lists are cut to the batch's shortest so that they
        stack (a few of some samples' context and target tokens are left out).

    Raises:
        ValueError: when the blocks hide every position of a sample ``MAX_MASK_TRIES`` times running.
    """
    t, h, w = grid
    bh, bw = block_size(grid, scale, aspect_ratio, generator)
    keeps, hiddens = [], []
    for _ in range(batch):
        for _ in range(MAX_MASK_TRIES):
            visible = torch.ones(h, w, dtype=torch.bool)
            for _ in range(num_blocks):
                top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
                visible[top : top + bh, left : left + bw] = False
            if visible.any():
                break
        else:
            raise ValueError(
                f"{num_blocks} blocks of {bh}x{bw} hide all {h}x{w} positions: lower mask_blocks or mask_scales"
            )
        tiled = visible.expand(t, h, w).reshape(-1)
        keeps.append(tiled.nonzero().squeeze(1))
        hiddens.append((~tiled).nonzero().squeeze(1))
    num_keep, num_hidden = min(map(len, keeps)), min(map(len, hiddens))
    keep = torch.stack([k[:num_keep] for k in keeps]).to(device)
    hidden = torch.stack([m[:num_hidden] for m in hiddens]).to(device)
    return keep, hidden


def feature_loss(predictions: Tensor, targets: Tensor, hidden: Tensor) -> Tensor:
    """V-JEPA's L1 loss: mean |prediction − target| over the hidden tokens' features, the targets
    [B, N, D] gathered at ``hidden`` [B, N_hidden] (pass them LayerNorm-ed, without gradient)."""
    chosen = torch.gather(targets, 1, hidden[..., None].expand(-1, -1, targets.shape[-1]))
    return (predictions - chosen).abs().mean()


class VJEPA(SSLMethod):
    """V-JEPA: context encoder on visible tokens, predictor, EMA target encoder's features as targets.

    Needs a backbone with tokens (``vit_tiny``, ``vit_s``, ``vit_b``, ``vit_l``).

    Args:
        backbone, feature_dim: see ``SSLMethod``; the backbone must give tokens.
        pred_dim: the predictor's width; null: half the encoder's, at most 384 (V-JEPA: 384). A
            multiple of 8.
        pred_depth: the predictor's transformer blocks (V-JEPA: 12).
        pred_heads: the predictor's attention heads; null: pred_dim // 64, at least 1.
        mask_blocks: blocks per mask, one mask (and prediction) per entry (V-JEPA: 8 short-range, 2 long-range).
        mask_scales: each mask's block area as a fraction of a time slice (V-JEPA: 0.15, 0.7).
        aspect_ratio: the range blocks' height/width ratios are drawn from (V-JEPA: 0.75 to 1.5).
        momentum: base EMA momentum of the target encoder, annealed to 1 by a cosine (V-JEPA:
            0.998, linearly to 1).
        cross_clip: targets from another clip of the same video (clip v + 1 mod V); needs ρ >= 2.
    """

    min_clips = 1
    needs_tokens = True

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        pred_dim: int | None = None,
        pred_depth: int = 12,
        pred_heads: int | None = None,
        mask_blocks: Sequence[int] = (8, 2),
        mask_scales: Sequence[float] = (0.15, 0.7),
        aspect_ratio: Sequence[float] = (0.75, 1.5),
        momentum: float = 0.998,
        cross_clip: bool = False,
    ) -> None:
        super().__init__(backbone, feature_dim)
        require_tokens("vjepa", backbone)
        if len(mask_blocks) != len(mask_scales) or not mask_blocks:
            raise ValueError(
                f"mask_blocks={list(mask_blocks)}, mask_scales={list(mask_scales)}: one scale per mask, at least one mask"
            )
        if not all(n >= 1 for n in mask_blocks) or not all(0 < s <= 1 for s in mask_scales):
            raise ValueError(
                f"mask_blocks={list(mask_blocks)} must be >= 1, mask_scales={list(mask_scales)} in (0, 1]"
            )
        if len(aspect_ratio) != 2 or not 0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"aspect_ratio={list(aspect_ratio)}: a range (low, high), 0 < low <= high")
        pred_dim = min(384, feature_dim // 2) if pred_dim is None else pred_dim
        if pred_dim < 8 or pred_dim % 8:
            raise ValueError(f"pred_dim={pred_dim}: must be a positive multiple of 8")
        self.masks = list(zip((int(n) for n in mask_blocks), (float(s) for s in mask_scales), strict=True))
        self.aspect_ratio = (float(aspect_ratio[0]), float(aspect_ratio[1]))
        self.base_momentum = self.momentum = momentum
        self.cross_clip = cross_clip
        self.predictor = TokenDecoder(
            feature_dim,
            pred_dim,
            pred_depth,
            default_heads(pred_dim, pred_heads),
            feature_dim,
            embed_bias=True,
        )
        self.target_backbone = momentum_copy(backbone)

    @property
    def clips_needed(self) -> int:
        """2 with ``cross_clip`` (a clip's targets come from another clip of the video), else 1."""
        return 2 if self.cross_clip else 1

    @property
    def encoder(self) -> nn.Module:
        """The EMA target encoder: what V-JEPA evaluates (its eval configs' ``checkpoint_key:
        target_encoder``), the slower-moving average of the context encoder."""
        return self.target_backbone

    @torch.no_grad()
    def targets(self, clips: Tensor) -> Tensor:
        """The target encoder's LayerNorm-ed tokens [B, V, N, D] of clips [B, V, C, T, H, W]; with
        ``cross_clip``, clip v's are those of clip v + 1 (mod V)."""
        b, v = clips.shape[:2]
        tokens = self.target_backbone.forward_tokens(clips.flatten(0, 1))
        tokens = F.layer_norm(tokens, tokens.shape[-1:]).unflatten(0, (b, v))
        return tokens.roll(-1, dims=1) if self.cross_clip else tokens

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"]
        if self.cross_clip and clips.shape[1] < 2:
            raise ValueError("vjepa with cross_clip needs ρ >= 2 clips per video (data.clips)")
        targets = self.targets(clips).flatten(0, 1)
        flat = clips.flatten(0, 1)  # each clip a sample of its own
        grid = self.backbone.token_grid(flat.shape)
        losses, visible_tokens = [], 0
        for num_blocks, scale in self.masks:
            keep, hidden = multiblock_mask(
                len(flat), grid, num_blocks, scale, self.aspect_ratio, device=flat.device
            )
            context = self.backbone.forward_tokens(flat, keep)
            predictions = self.predictor(context, keep, hidden, grid)
            losses.append(in_fp32(feature_loss, predictions, targets, hidden))
            visible_tokens += keep.shape[1]
        loss = torch.stack(losses).mean()
        metrics = {
            "loss": loss.item(),
            "momentum": self.momentum,
            "visible_tokens": visible_tokens / len(self.masks),
        }
        return StepOutput(loss, metrics)

    def on_step_end(self, progress: float) -> None:
        self.momentum = ema_step([(self.backbone, self.target_backbone)], self.base_momentum, progress)
