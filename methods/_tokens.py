"""Pieces the masked methods share: the backbone check and the narrow transformer that fills in
hidden tokens (VideoMAE's decoder, V-JEPA's predictor)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.vit import TOKEN_BACKBONES, Block, gives_tokens, init_weights, sincos_pos_embed


def require_tokens(method: str, backbone: nn.Module) -> None:
    """Raise ValueError unless ``backbone`` gives tokens (``harness.vit.gives_tokens``), naming the ones that do."""
    if not gives_tokens(backbone):
        raise ValueError(
            f"{method} needs a backbone that gives tokens (forward_tokens, token_grid), and "
            f"{type(backbone).__name__} gives only pooled features: choose backbone.name from "
            f"{', '.join(TOKEN_BACKBONES)}"
        )


def default_heads(width: int, heads: int | None) -> int:
    """``heads``, or for None one head per 64 channels, at least 1 (VideoMAE's decoders: 192/3, 384/6, 512/8)."""
    return max(1, width // 64) if heads is None else heads


class TokenDecoder(nn.Module):
    """Visible tokens in, predictions for the hidden ones out.

    The visible tokens [B, N_keep, in_dim] are projected to ``width``; one learned mask token per
    hidden position is appended; every token gets the fixed 3D sin-cos position embedding of its
    grid position; ``depth`` pre-norm blocks, a LayerNorm and a Linear to ``out_dim`` give the
    hidden tokens' predictions [B, N_hidden, out_dim].

    Args:
        in_dim: width of the visible tokens (the encoder's).
        width: the decoder's width; a multiple of 8 (sin-cos position embeddings).
        depth: transformer blocks.
        heads: attention heads (they divide ``width``).
        out_dim: width of each prediction (pixels of a tubelet; the encoder's width).
        embed_bias: a bias in the input projection (V-JEPA's predictor: yes; VideoMAE's: no).
    """

    def __init__(
        self, in_dim: int, width: int, depth: int, heads: int, out_dim: int, embed_bias: bool
    ) -> None:
        super().__init__()
        if width < 8 or width % 8:
            raise ValueError(f"width {width}: must be a positive multiple of 8")
        if depth < 1 or heads < 1 or width % heads:
            raise ValueError(
                f"depth {depth}, heads {heads}: need a block, and heads that divide the width {width}"
            )
        self.width = width
        self.embed = nn.Linear(in_dim, width, bias=embed_bias)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, out_dim)
        init_weights(self)
        # 1-D, so that weight_decay_groups exempts it from weight decay, as VideoMAE and V-JEPA do
        self.mask_token = nn.Parameter(torch.empty(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def forward(self, visible: Tensor, keep: Tensor, hidden: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Predictions [B, N_hidden, out_dim] from ``visible`` [B, N_keep, in_dim] at token indices
        ``keep`` [B, N_keep], for the tokens at ``hidden`` [B, N_hidden] of the (t, h, w) grid."""
        x = self.embed(visible)
        pos = sincos_pos_embed(self.width, grid).to(x.device, x.dtype).expand(x.shape[0], -1, -1)
        pos_visible = torch.gather(pos, 1, keep[..., None].expand(-1, -1, self.width))
        pos_hidden = torch.gather(pos, 1, hidden[..., None].expand(-1, -1, self.width))
        x = torch.cat([x + pos_visible, self.mask_token.to(x.dtype) + pos_hidden], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -hidden.shape[1] :]))
