"""Video backbones as feature extractors: clips [B, C, T, H, W] -> pooled features [B, D].

``build(name)`` returns ``(module, feature_dim)``: the network with its classifier removed and
global average pooling over time and space (the MViTs: their class token; the ViTs: the mean
of their tokens), randomly initialised: nothing is downloaded. Fixed-size head pools are
replaced by global pooling, so the convolutional networks take any clip at least as large as
their strides need; the MViTs take only the size they are built for, given by the module's
``input_size`` attribute (T, H, W); the ViTs any clip that divides into their tubelets.

==============  =====  ==========================================================
name            D      input (T, H, W)
==============  =====  ==========================================================
r3d_tiny        4*w    any (ours: small 3D ResNet for CPU studies, ``width`` w=32)
slow_r50        2048   any (pytorchvideo Slow 8x8 R50: trained on 8x224x224)
r2plus1d_r50    2048   any (pytorchvideo R(2+1)D-50: 16x224x224)
x3d_xs          2048   any (pytorchvideo X3D-XS: 4x160x160)
x3d_s           2048   any (pytorchvideo X3D-S: 13x160x160; same network as x3d_xs)
csn_r101        2048   any (pytorchvideo ir-CSN-101: 32x224x224)
slowfast_r50    2304   any (pytorchvideo SlowFast 8x8 R50: 32x224x224, see SlowFastFeatures)
mvit_b          768    exactly ``input_size``: 16x224x224 unless built with
                       ``temporal_size``/``spatial_size`` (pytorchvideo MViT-B 16x4)
r3d_18          512    any (torchvision)
r2plus1d_18     512    any (torchvision)
mc3_18          512    any (torchvision)
s3d             1024   T >= 5, H, W >= 17 (torchvision; trained on 16x224x224)
mvit_v2_s       768    exactly 16x224x224 (torchvision)
swin3d_t        768    any (torchvision)
vit_tiny        96     T a multiple of 2, H and W of 8 (ours, ``harness.vit``: 4 blocks, 3 heads,
                       8x8 patches; trains in seconds on the demo's 4x32x32 clips)
vit_s           384    T a multiple of 2, H and W of 16 (ViT-S/16 over 2x16x16 tubelets: 12
                       blocks, 6 heads)
vit_b           768    as vit_s (ViT-B/16: 12 blocks, 12 heads)
vit_l           1024   as vit_s (ViT-L/16: 24 blocks, 16 heads)
==============  =====  ==========================================================

The ViTs (``harness.vit.VideoViT``) also give tokens: ``forward_tokens(clips, keep=None)`` ->
[B, N, D] and ``token_grid(clip_shape)``, what the masked methods (VideoMAE) need;
``gives_tokens(module)`` says whether a built backbone has them, ``TOKEN_BACKBONES`` names those
that do. Their feature dim is their ``embed_dim``.

Keyword arguments go to the underlying constructor (``params_of(name)`` lists the ones a
backbone takes, which ``harness.config`` checks ``backbone.*`` keys against). All modules
accept channels_last_3d inputs and weights. Third-party packages add backbones through the
entry-point group ``rho.backbones`` (``name = "package.module:build"``, a callable
``build(**params) -> (module, feature_dim)``); a built-in name wins over an entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torchvision.models.video as tv_video
from torch import nn

import harness.compat  # noqa: F401  (torchvision shim; must precede pytorchvideo imports)
from harness import plugins
from harness.schema import keyword_params
from harness.vit import TOKEN_BACKBONES, VideoViT, gives_tokens  # noqa: F401  (re-exported)

# isort: split
from pytorchvideo.models.csn import create_csn
from pytorchvideo.models.head import SequencePool
from pytorchvideo.models.r2plus1d import create_r2plus1d
from pytorchvideo.models.resnet import create_resnet
from pytorchvideo.models.slowfast import create_slowfast
from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers
from pytorchvideo.models.x3d import create_x3d


class _BasicBlock3d(nn.Module):
    """Residual block: a 3x3x3 conv then a 1x3x3 conv (temporal mixing once per block, half the cost)."""

    def __init__(self, dim_in: int, dim_out: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_out, (3, 3, 3), stride=stride, padding=(1, 1, 1), bias=False)
        self.bn_a = nn.BatchNorm3d(dim_out)
        self.conv_b = nn.Conv3d(dim_out, dim_out, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn_b = nn.BatchNorm3d(dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if dim_in != dim_out or stride != (1, 1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv3d(dim_in, dim_out, 1, stride=stride, bias=False), nn.BatchNorm3d(dim_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        return self.relu(out + self.shortcut(x))


class TinyResNet3d(nn.Module):
    """A small 3D ResNet for CPU studies: stem 3x7x7 then three stages of widths w, 2w, 4w.

    With ``width=32`` it has about 0.5M parameters and 128 output features; any T >= 1 and
    H, W >= 1 work (strides shrink them, global average pooling removes them).
    """

    def __init__(self, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.stages = nn.Sequential(
            _BasicBlock3d(width, width, (1, 1, 1)),
            _BasicBlock3d(width, 2 * width, (1, 2, 2)),
            _BasicBlock3d(2 * width, 4 * width, (2, 2, 2)),
        )
        self.feature_dim = 4 * width

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(clips)).mean(dim=(2, 3, 4))


class GlobalAvgPool(nn.Module):
    """Runs ``body`` (clips -> [B, D, t, h, w]) and averages over time and space -> [B, D]."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.body(clips).mean(dim=(2, 3, 4))


class SlowFastFeatures(nn.Module):
    """SlowFast on a single clip: the fast pathway sees all T frames, the slow one every alpha-th.

    The slow pathway gets ``ceil(T / alpha)`` frames, which is what the fast-to-slow lateral
    connections (temporal stride alpha) produce, so any T works; T = 32 gives the paper's 8x8
    slow pathway with a 32-frame fast one. Output: pooled slow and fast features concatenated.
    """

    def __init__(self, body: nn.Module, alpha: int = 4) -> None:
        super().__init__()
        self.body = body
        self.alpha = alpha

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.body([clips[:, :, :: self.alpha], clips]).mean(dim=(2, 3, 4))


def _without_head(model: nn.Module) -> nn.Module:
    """Drop a pytorchvideo ``Net``'s last block (its classification head) and pool globally."""
    model.blocks = model.blocks[:-1]
    return GlobalAvgPool(model)


def _slow_r50(**kwargs: object) -> tuple[nn.Module, int]:
    # pytorchvideo hub ``slow_r50``: no temporal conv in the stem and in res2/res3 (the defaults'
    # conv_a kernels (1,1,1),(1,1,1),(3,1,1),(3,1,1)); its (8,7,7) head pool becomes global pooling.
    model = create_resnet(model_depth=50, stem_conv_kernel_size=(1, 7, 7), head=None, **kwargs)
    return GlobalAvgPool(model), 2048


def _r2plus1d_r50(**kwargs: object) -> tuple[nn.Module, int]:
    return _without_head(create_r2plus1d(model_depth=50, **kwargs)), 2048


def _csn_r101(**kwargs: object) -> tuple[nn.Module, int]:
    # pytorchvideo hub ``csn_r101`` (ir-CSN-101).
    return _without_head(create_csn(model_depth=101, stem_pool=nn.MaxPool3d, **kwargs)), 2048


def _x3d(**kwargs: object) -> tuple[nn.Module, int]:
    """X3D-XS/S: they differ only in input size (4 vs 13 frames at 160x160), which only sized the
    head's pool, made global here. The head's projected pooling (1x1x1 conv, pool, 1x1x1 conv to
    2048) stays; only dropout and the classifier go."""
    model = create_x3d(depth_factor=2.2, **kwargs)
    projected_pool = model.blocks[-1].pool
    projected_pool.pool = nn.AdaptiveAvgPool3d(1)
    model.blocks[-1] = projected_pool
    return GlobalAvgPool(model), projected_pool.post_conv.out_channels


def _slowfast_r50(alpha: int = 4, **kwargs: object) -> tuple[nn.Module, int]:
    """SlowFast 8x8 R50 on one clip (``SlowFastFeatures``).

    Args:
        alpha: the slow pathway sees every alpha-th frame of the fast one (the fusion's temporal stride).
    """
    # pytorchvideo hub ``slowfast_r50``; 2048 slow + 256 fast features.
    body = create_slowfast(
        model_depth=50,
        slowfast_fusion_conv_kernel_size=(7, 1, 1),
        slowfast_fusion_conv_stride=(alpha, 1, 1),
        head=None,
        head_pool=nn.AdaptiveAvgPool3d,
        head_output_size=((1, 1, 1), (1, 1, 1)),
        **kwargs,
    )
    return SlowFastFeatures(body, alpha=alpha), 2048 + 256


def _mvit_b(temporal_size: int = 16, spatial_size: int = 224, **kwargs: object) -> tuple[nn.Module, int]:
    """MViT-B 16x4 (pytorchvideo hub ``mvit_base_16x4``); its position embeddings fix the input size.

    Args:
        temporal_size: frames per clip, the only number it takes (its ``input_size`` T).
        spatial_size: clip height and width in pixels, the only size it takes.
    """
    model = create_multiscale_vision_transformers(
        spatial_size=spatial_size,
        temporal_size=temporal_size,
        embed_dim_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
        atten_head_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
        pool_q_stride_size=[[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]],
        pool_kv_stride_adaptive=[1, 8, 8],
        pool_kvq_kernel=[3, 3, 3],
        **kwargs,
    )
    model.head = SequencePool("cls")
    model.input_size = (temporal_size, spatial_size, spatial_size)
    return model, 768


def _torchvision_resnet(constructor: Callable[..., nn.Module]) -> Callable[..., tuple[nn.Module, int]]:
    def build_resnet(**kwargs: object) -> tuple[nn.Module, int]:
        model = constructor(weights=None, **kwargs)
        model.fc = nn.Identity()
        return model, 512

    return build_resnet


def _s3d(**kwargs: object) -> tuple[nn.Module, int]:
    model = tv_video.s3d(weights=None, **kwargs)
    model.avgpool = nn.AdaptiveAvgPool3d(1)
    model.classifier = nn.Identity()
    return model, 1024


def _mvit_v2_s(**kwargs: object) -> tuple[nn.Module, int]:
    """torchvision MViT-v2-S; torchvision builds it for 16x224x224 clips, the only size it takes."""
    model = tv_video.mvit_v2_s(weights=None, **kwargs)
    model.head = nn.Identity()
    model.input_size = (16, 224, 224)
    return model, 768


def _swin3d_t(**kwargs: object) -> tuple[nn.Module, int]:
    model = tv_video.swin3d_t(weights=None, **kwargs)
    model.head = nn.Identity()
    return model, 768


def _r3d_tiny(width: int = 32) -> tuple[nn.Module, int]:
    """``TinyResNet3d``.

    Args:
        width: channels of the first stage (w; the stages have w, 2w, 4w, the features 4w).
    """
    model = TinyResNet3d(width=width)
    return model, model.feature_dim


def _vit(embed_dim: int, depth: int, num_heads: int, **defaults: Any) -> Callable[..., tuple[nn.Module, int]]:
    """A ``VideoViT`` size; ``defaults`` are its own defaults of the other arguments (``_FORWARDED`` lists them)."""

    def build_vit(**kwargs: object) -> tuple[nn.Module, int]:
        return VideoViT(embed_dim, depth, num_heads, **{**defaults, **kwargs}), embed_dim

    return build_vit


Builder = Callable[..., tuple[nn.Module, int]]

ENTRY_POINT_GROUP = "rho.backbones"

_BUILTIN: dict[str, Builder] = {
    "r3d_tiny": _r3d_tiny,
    "slow_r50": _slow_r50,
    "r2plus1d_r50": _r2plus1d_r50,
    "x3d_xs": _x3d,
    "x3d_s": _x3d,
    "csn_r101": _csn_r101,
    "slowfast_r50": _slowfast_r50,
    "mvit_b": _mvit_b,
    "r3d_18": _torchvision_resnet(tv_video.r3d_18),
    "r2plus1d_18": _torchvision_resnet(tv_video.r2plus1d_18),
    "mc3_18": _torchvision_resnet(tv_video.mc3_18),
    "s3d": _s3d,
    "mvit_v2_s": _mvit_v2_s,
    "swin3d_t": _swin3d_t,
    "vit_tiny": _vit(96, 4, 3, frames=4, image_size=32, patch_size=8),
    "vit_s": _vit(384, 12, 6),
    "vit_b": _vit(768, 12, 12),
    "vit_l": _vit(1024, 24, 16),
}


class Forwarding(NamedTuple):
    """Where a built-in builder's ``**kwargs`` end up: ``constructor``, less the keywords set on the way."""

    constructor: Callable[..., Any]
    fixed: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}  # where the way there sets a default other than the constructor's


_VIDEO_RESNET = Forwarding(tv_video.VideoResNet, ("block", "conv_makers", "layers", "stem"))
_VIT = Forwarding(VideoViT, ("embed_dim", "depth", "num_heads"))  # the size is the name's
_FORWARDED: dict[str, Forwarding] = {
    "slow_r50": Forwarding(create_resnet, ("model_depth", "stem_conv_kernel_size", "head")),
    "r2plus1d_r50": Forwarding(create_r2plus1d, ("model_depth",)),
    "x3d_xs": Forwarding(create_x3d, ("depth_factor",)),
    "x3d_s": Forwarding(create_x3d, ("depth_factor",)),
    "csn_r101": Forwarding(create_csn, ("model_depth", "stem_pool")),
    "slowfast_r50": Forwarding(
        create_slowfast,
        (
            "model_depth",
            "slowfast_fusion_conv_kernel_size",
            "slowfast_fusion_conv_stride",
            "head",
            "head_pool",
            "head_output_size",
        ),
    ),
    "mvit_b": Forwarding(
        create_multiscale_vision_transformers,
        (
            "embed_dim_mul",
            "atten_head_mul",
            "pool_q_stride_size",
            "pool_kv_stride_adaptive",
            "pool_kvq_kernel",
        ),
    ),
    "r3d_18": _VIDEO_RESNET,
    "r2plus1d_18": _VIDEO_RESNET,
    "mc3_18": _VIDEO_RESNET,
    "s3d": Forwarding(tv_video.S3D),
    "mvit_v2_s": Forwarding(
        tv_video.MViT,
        (
            "spatial_size",
            "temporal_size",
            "block_setting",
            "residual_pool",
            "residual_with_cls_embed",
            "rel_pos_embed",
            "proj_after_attn",
        ),
        {"stochastic_depth_prob": 0.2},
    ),
    "swin3d_t": Forwarding(
        tv_video.SwinTransformer3d,
        ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "stochastic_depth_prob"),
    ),
    # the CPU ViT: sized for the demo's 4x32x32 clips (2x4x4 = 32 tokens); the defaults _BUILTIN's
    # _vit(...) call sets (tests/harness/test_vit.py holds the two together)
    "vit_tiny": Forwarding(
        VideoViT, ("embed_dim", "depth", "num_heads"), {"frames": 4, "image_size": 32, "patch_size": 8}
    ),
    "vit_s": _VIT,
    "vit_b": _VIT,
    "vit_l": _VIT,
}


def available() -> list[str]:
    """Names ``build`` accepts, built-in and from entry points, sorted."""
    return plugins.available(_BUILTIN, ENTRY_POINT_GROUP)


def get(name: str) -> Builder:
    """The builder registered as ``name``.

    Raises:
        ValueError: for an unknown name (listing the choices), or an entry point that is not callable.
    """
    return plugins.lookup(
        _BUILTIN, ENTRY_POINT_GROUP, name, kind="backbone", accept=callable, must_be="callable"
    )


def params_of(name: str) -> dict[str, Any]:
    """The keyword parameters backbone ``name`` takes and their defaults (None: none, or required).

    A built-in builder's own parameters, then those of the constructor its ``**kwargs`` go to,
    less the ones it sets itself; an entry point's: its callable's named keyword parameters.
    """
    builder = get(name)
    own = keyword_params(builder)
    if name not in _FORWARDED:  # an entry point, or a builder that forwards nothing
        return own
    forwarding = _FORWARDED[name]
    forwarded = keyword_params(forwarding.constructor, skip={*forwarding.fixed, *own})
    return {**own, **forwarded, **{k: v for k, v in forwarding.defaults.items() if k in forwarded}}


def build(name: str, **kwargs: object) -> tuple[nn.Module, int]:
    """Build backbone ``name`` (randomly initialised); returns ``(module, feature_dim)``.

    Raises:
        ValueError: for an unknown name, listing the choices.
    """
    return get(name)(**kwargs)
