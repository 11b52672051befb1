"""VideoMAE: reconstruct the pixels of masked space-time tubes from the visible tenth.

Tong, Song, Wang, Wang, "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
Self-Supervised Video Pre-Training", NeurIPS 2022 (MCG-NJU/VideoMAE). Tube masking hides the
same spatial patches in every time slice of tubelets (90% by default), so a hidden patch cannot
be copied from the next frame; the encoder (a ViT backbone: ``harness.vit``) runs on the visible
tokens only; a light decoder takes them with mask tokens, each with its position embedding, and
regresses the per-patch normalised pixels of the masked tubes (MSE).

ρ clips: each of the V clips of a video is a sample of its own, masked on its own (VideoMAE v2's
repeated sampling: several clips per decoded video); the loss averages over all of them. V = 1
works (``min_clips``), so ρ = 1 decodes one clip per video.

Memory: the encoder sees N_keep = (1 − mask_ratio)·N tokens, so its activations and attention are
a tenth (a hundredth) of a full forward's at the default ratio; only the narrow decoder sees all
N tokens. There is no separate low-memory mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.vit import patchify
from methods._precision import in_fp32
from methods._tokens import TokenDecoder, default_heads, require_tokens
from methods.base import SSLMethod, StepOutput

TARGET_EPS = 1e-6  # VideoMAE's engine_for_pretraining: (x - mean) / (std + 1e-6)


def tube_mask(
    batch: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """VideoMAE's tube masking: per sample, ``int(mask_ratio * h * w)`` spatial positions hidden in
    every one of the t time slices (``TubeMaskingGenerator``), drawn independently per sample.

    Args:
        batch: samples (clips) to mask.
        grid: the token grid (t, h, w); tokens are indexed ``i*h*w + j*w + k``.
        mask_ratio: fraction of each time slice's h*w positions to hide, in [0, 1).
        generator: random source (None: torch's global one, which the harness seeds).

    Returns:
        ``(keep, masked)``: long [batch, t*n_keep] and [batch, t*n_masked] token indices, each
        ascending; together a partition of the t*h*w tokens.

    Raises:
        ValueError: for a ratio outside [0, 1) (at least one position of each slice stays visible).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio!r}: must be in [0, 1)")
    t, h, w = grid
    per_slice = h * w
    num_keep = per_slice - int(mask_ratio * per_slice)  # at least 1, as the ratio is < 1
    order = torch.rand(batch, per_slice, generator=generator).argsort(dim=1).to(device)
    offsets = torch.arange(t, device=device)[None, :, None] * per_slice  # [1, t, 1]
    keep = (order[:, None, :num_keep].sort(dim=2).values + offsets).reshape(batch, -1)
    masked = (order[:, None, num_keep:].sort(dim=2).values + offsets).reshape(batch, -1)
    return keep, masked


@torch.no_grad()
def patch_targets(clips: Tensor, tubelet_size: int, patch_size: int, normalize: bool = True) -> Tensor:
    """Regression targets [B, t*h*w, tubelet_size*patch_size²*C] of clips [B, C, T, H, W].

    Each token's tubelet pixels in (frame, row, column, channel) order; with ``normalize``, each
    channel of each tubelet standardised over its pixels, ``(x − mean) / (std + 1e-6)`` with the
    unbiased std (VideoMAE's ``normlize_target``).
    """
    patches = patchify(clips, tubelet_size, patch_size).float()  # [B, N, P, C]
    if normalize:
        mean = patches.mean(dim=-2, keepdim=True)
        std = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        patches = (patches - mean) / (std + TARGET_EPS)
    return patches.flatten(2)


def reconstruction_loss(predictions: Tensor, targets: Tensor, masked: Tensor) -> Tensor:
    """Mean squared error between the predictions [B, N_mask, P] of the masked tokens and their
    targets, gathered from ``targets`` [B, N, P] at ``masked`` [B, N_mask] (token indices)."""
    chosen = torch.gather(targets, 1, masked[..., None].expand(-1, -1, targets.shape[-1]))
    return F.mse_loss(predictions, chosen)


class VideoMAE(SSLMethod):
    """VideoMAE: a ViT encoder on the visible tubes, a light decoder reconstructs the masked ones.

    Needs a backbone with tokens (``harness.vit``: ``vit_tiny``, ``vit_s``, ``vit_b``, ``vit_l``);
    evaluation uses its pooled features over all tokens, unmasked.

    Args:
        backbone, feature_dim: see ``SSLMethod``; the backbone must give tokens.
        mask_ratio: fraction of each time slice's patches hidden, the same ones in every slice
            (tube masking; VideoMAE: 0.9).
        decoder_dim: the decoder's width; null: half the encoder's (VideoMAE's ViT-S/B/L: 192,
            384, 512). A multiple of 8 (its sin-cos position embeddings).
        decoder_depth: the decoder's transformer blocks (VideoMAE's pretraining scripts: 4).
        decoder_heads: the decoder's attention heads; null: decoder_dim // 64, at least 1
            (VideoMAE's ViT-S/B/L: 3, 6, 8).
        norm_targets: regress each tubelet's pixels standardised per channel over the tubelet
            (VideoMAE's ``normlize_target``, its default) rather than the input pixels as they are.
    """

    min_clips = 1
    needs_tokens = True

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        mask_ratio: float = 0.9,
        decoder_dim: int | None = None,
        decoder_depth: int = 4,
        decoder_heads: int | None = None,
        norm_targets: bool = True,
    ) -> None:
        super().__init__(backbone, feature_dim)
        require_tokens("videomae", backbone)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio!r}: must be in [0, 1)")
        decoder_dim = feature_dim // 2 if decoder_dim is None else decoder_dim
        if decoder_dim < 8 or decoder_dim % 8:
            raise ValueError(f"decoder_dim={decoder_dim}: must be a positive multiple of 8")
        self.mask_ratio, self.norm_targets = mask_ratio, norm_targets
        patch_pixels = backbone.tubelet_size * backbone.patch_size**2 * getattr(backbone, "in_channels", 3)
        self.decoder = TokenDecoder(
            feature_dim,
            decoder_dim,
            decoder_depth,
            default_heads(decoder_dim, decoder_heads),
            patch_pixels,
            embed_bias=False,  # VideoMAE's encoder_to_decoder
        )

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        clips = batch["clips"].flatten(0, 1)  # each of the V clips a sample: [B*V, C, T, H, W]
        grid = self.backbone.token_grid(clips.shape)
        keep, masked = tube_mask(len(clips), grid, self.mask_ratio, device=clips.device)
        visible = self.backbone.forward_tokens(clips, keep)
        predictions = self.decoder(visible, keep, masked, grid)
        targets = patch_targets(
            clips, self.backbone.tubelet_size, self.backbone.patch_size, self.norm_targets
        )
        loss = in_fp32(reconstruction_loss, predictions, targets, masked)
        metrics = {"loss": loss.item(), "visible_tokens": float(keep.shape[1])}
        return StepOutput(loss, metrics)
