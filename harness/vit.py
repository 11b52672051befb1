"""A plain video ViT over space-time tubelets, with a token API for masked methods (VideoMAE, V-JEPA).

``VideoViT``: clips [B, C, T, H, W] are cut into tubelets of ``tubelet_size`` frames and
``patch_size`` x ``patch_size`` pixels (a Conv3d with stride = kernel), each becomes a token of
width ``embed_dim`` plus its space-time position embedding; pre-norm transformer blocks
(``torch.nn.functional.scaled_dot_product_attention``), a final LayerNorm; the pooled features are
the mean of the final tokens. No class token. Tokens are ordered (t, h, w), t slowest, the order of
``patchify`` and of VideoMAE's ``rearrange('b c (t p0) (h p1) (w p2) -> b (t h w) ...')``.

Token API (what the masked methods use; CNN backbones have none):

- ``token_grid(clip_shape) -> (t, h, w)``: the token grid of clips of shape [..., T, H, W];
  ``num_tokens(clip_shape)`` its size.
- ``forward_tokens(clips, keep=None) -> [B, N, D]``: the final tokens; with ``keep`` (long
  [B, N_keep], indices into the t*h*w grid) every tubelet is embedded (one strided convolution)
  and given its position embedding, then only the kept tokens go through the blocks: the
  blocks' cost and activation memory scale with N_keep, not N (VideoMAE's 90% masking: a tenth
  of the tokens).
- ``embed_dim``, ``tubelet_size``, ``patch_size``, ``in_channels``.

Position embeddings (``pos_embed``): ``sincos``, fixed 3D sin-cos computed for each clip's token
grid (V-JEPA's ``get_3d_sincos_pos_embed``: half the width for time, a quarter each for height and
width), so any clip size whose T, H, W divide by the tubelet and patch sizes works; or ``learned``,
a parameter for the grid of ``frames`` x ``image_size`` x ``image_size`` clips, trilinearly
interpolated to the grid of a clip of another size. Clips whose T, H, W do not divide by the
tubelet and patch sizes are refused (nothing is cropped silently).

Pure torch, imports nothing of ours: ``harness.backbones`` registers the sizes, and methods build
their decoders and predictors from ``Block`` and ``sincos_pos_embed``. Written here rather than
taken from timm: about 150 lines against a new dependency, and the token API (encode only the
kept tokens, position embeddings computed for any grid) is what timm's ViT would need patching for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POS_EMBEDS = ("sincos", "learned")
#: The names ``harness.backbones`` registers the sizes under: the backbones that give tokens.
TOKEN_BACKBONES = ("vit_tiny", "vit_s", "vit_b", "vit_l")
LAYER_NORM_EPS = 1e-6  # VideoMAE's and V-JEPA's ViTs


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """[N, dim] sin-cos features of positions [N]: ``sin(p * w_k)`` then ``cos(p * w_k)``,
    ``w_k = 10000^(-k / (dim/2))`` for k < dim/2 (MAE's ``get_1d_sincos_pos_embed_from_grid``)."""
    if dim % 2:
        raise ValueError(f"sin-cos embeddings need an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed(dim: int, grid: tuple[int, int, int]) -> Tensor:
    """Fixed 3D sin-cos position embeddings [t*h*w, dim] of a (t, h, w) token grid, in (t, h, w) order.

    Width ``dim/2`` encodes the time index, ``dim/4`` each the row and the column, concatenated
    in that order (V-JEPA's ``get_3d_sincos_pos_embed``); ``dim`` must be a multiple of 8 (4 would
    leave an odd width for a row or a column).
    """
    if dim % 8:
        raise ValueError(f"3D sin-cos position embeddings need a width divisible by 8, got {dim}")
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat(
        [
            sincos_1d(dim // 2, tt.reshape(-1)),
            sincos_1d(dim // 4, hh.reshape(-1)),
            sincos_1d(dim // 4, ww.reshape(-1)),
        ],
        dim=1,
    )


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} does not divide into {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, dim/heads]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))`` (GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """VideoMAE's initialisation: xavier-uniform Linear weights, zero biases, LayerNorm 1 and 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VideoViT(nn.Module):
    """ViT over space-time tubelets: clips [B, C, T, H, W] -> mean of the final tokens [B, embed_dim].

    Args:
        embed_dim: token width (ViT-S 384, B 768, L 1024); a multiple of 8 with ``pos_embed: sincos``.
        depth: transformer blocks (S and B 12, L 24).
        num_heads: attention heads (S 6, B 12, L 16).
        frames: frames per clip that the learned position embeddings are sized for (``pos_embed:
            learned``; other clip lengths interpolate them). Sin-cos embeddings fit any clip.
        image_size: clip height and width in pixels that the learned position embeddings are sized
            for, as ``frames``.
        tubelet_size: frames per token (VideoMAE: 2).
        patch_size: pixels per token side (ViT-*/16: 16).
        in_channels: colour channels of the clips.
        mlp_ratio: hidden width of each block's MLP as a multiple of ``embed_dim``.
        pos_embed: ``sincos`` (fixed 3D sin-cos for each clip's token grid) or ``learned``.
        qkv_bias: biases in the attention's query, key and value projection.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        *,
        frames: int = 16,
        image_size: int = 224,
        tubelet_size: int = 2,
        patch_size: int = 16,
        in_channels: int = 3,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed={pos_embed!r}: choose one of {', '.join(map(repr, POS_EMBEDS))}")
        if pos_embed == "sincos" and embed_dim % 8:
            raise ValueError(f"embed_dim={embed_dim}: sin-cos position embeddings need a multiple of 8")
        self.embed_dim, self.tubelet_size, self.patch_size = embed_dim, tubelet_size, patch_size
        self.num_heads = num_heads  # the attentive probe's pooler takes the same (V-JEPA)
        self.in_channels, self.pos_embed_kind = in_channels, pos_embed
        self.patch_embed = nn.Conv3d(
            in_channels,
            embed_dim,
            (tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )
        self.pos_embed: nn.Parameter | None = None
        self.learned_grid: tuple[int, int, int] | None = None
        if pos_embed == "learned":
            self.learned_grid = self.token_grid((frames, image_size, image_size))
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.learned_grid), embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        init_weights(self)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.02, b=0.02)  # VideoMAE's learned init

    def token_grid(self, clip_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """The (t, h, w) token grid of clips of shape [..., T, H, W].

        Raises:
            ValueError: when T is not a multiple of ``tubelet_size`` or H, W of ``patch_size``.
        """
        frames, height, width = (int(size) for size in clip_shape[-3:])
        sizes = (self.tubelet_size, self.patch_size, self.patch_size)
        if any(size % step or size < step for size, step in zip((frames, height, width), sizes, strict=True)):
            raise ValueError(
                f"clips of {frames}x{height}x{width} (TxHxW) do not divide into {self.tubelet_size}x"
                f"{self.patch_size}x{self.patch_size} tubelets: T must be a multiple of tubelet_size "
                f"{self.tubelet_size}, H and W of patch_size {self.patch_size}"
            )
        return frames // self.tubelet_size, height // self.patch_size, width // self.patch_size

    def num_tokens(self, clip_shape: tuple[int, ...] | torch.Size) -> int:
        """t * h * w tokens of clips of shape [..., T, H, W]."""
        return math.prod(self.token_grid(clip_shape))

    def position_embeddings(self, grid: tuple[int, int, int]) -> Tensor:
        """[1, t*h*w, embed_dim] position embeddings of a (t, h, w) grid: sin-cos computed for it, or
        the learned ones (trilinearly interpolated when ``grid`` is not the one they are sized for)."""
        if self.pos_embed is None:
            return sincos_pos_embed(self.embed_dim, grid).to(self.patch_embed.weight.device)[None]
        if tuple(grid) == self.learned_grid:
            return self.pos_embed
        assert self.learned_grid is not None
        table = self.pos_embed.reshape(1, *self.learned_grid, self.embed_dim).permute(0, 4, 1, 2, 3)
        table = F.interpolate(table, size=grid, mode="trilinear", align_corners=False)
        return table.permute(0, 2, 3, 4, 1).reshape(1, math.prod(grid), self.embed_dim)

    def forward_tokens(self, clips: Tensor, keep: Tensor | None = None) -> Tensor:
        """Final (LayerNorm-ed) tokens [B, N, D] of clips [B, C, T, H, W], in (t, h, w) order.

        Args:
            clips: float [B, C, T, H, W].
            keep: None for all t*h*w tokens, or long [B, N_keep] indices of the visible tokens:
                only those, with their position embeddings, go through the blocks, in the order
                given (and come out in it).
        """
        grid = self.token_grid(clips.shape)
        tokens = self.patch_embed(clips).flatten(2).transpose(1, 2)  # [B, t*h*w, D]
        tokens = tokens + self.position_embeddings(grid).to(tokens.dtype)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, self.embed_dim))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, clips: Tensor) -> Tensor:
        """Pooled features [B, embed_dim]: the mean of all final tokens."""
        return self.forward_tokens(clips).mean(dim=1)


def gives_tokens(module: nn.Module) -> bool:
    """Whether a built backbone has the token API (``forward_tokens``, ``token_grid``, ``embed_dim``,
    ``tubelet_size``, ``patch_size``): ``VideoViT`` and look-alikes; the CNNs and the MViTs don't."""
    names = ("forward_tokens", "token_grid", "embed_dim", "tubelet_size", "patch_size")
    return all(hasattr(module, name) for name in names)


def patchify(clips: Tensor, tubelet_size: int, patch_size: int) -> Tensor:
    """Clips [B, C, T, H, W] -> tubelets' pixels [B, t*h*w, tubelet_size*patch_size², C], tokens in
    (t, h, w) order, pixels in (frame, row, column) order: VideoMAE's ``rearrange(x, 'b c (t p0)
    (h p1) (w p2) -> b (t h w) (p0 p1 p2) c')``."""
    b, c, frames, height, width = clips.shape
    t, h, w = frames // tubelet_size, height // patch_size, width // patch_size
    x = clips.reshape(b, c, t, tubelet_size, h, patch_size, w, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b t h w p0 p1 p2 c
    return x.reshape(b, t * h * w, tubelet_size * patch_size * patch_size, c)
