"""The attentive probe (V-JEPA's frozen evaluation): a cross-attention pooler and a linear classifier
trained on frozen token features, which are extracted once per encoder and cached.

A sample is one spatial view of a video: the tokens of its K temporal views concatenated
(V-JEPA's ``attend_across_segments``), [K·L, D]. One learned query attends to them
(``CrossAttentionBlock``: LayerNorm on the tokens, cross-attention, a residual MLP), and a
linear layer gives the class logits; a test video's softmax probabilities are averaged over its
spatial views. AdamW with weight decay on the weights only, a linear warmup and a half-cosine
lr to 0, gradients clipped at 1, as facebookresearch/jepa ``evals/video_classification_frozen``.

Where we differ from it (docs/fidelity.md): the encoder runs once on fixed views and its tokens
are cached (V-JEPA runs it every epoch on newly augmented clips), and the probe trains in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.eval.context import EvalContext
from harness.eval.features import cached_features
from harness.eval.linear import minibatch_schedule
from harness.eval.metrics import accuracy, class_count, view_probabilities
from harness.eval.spec import AttentiveSpec, Benchmark
from harness.optim import set_lr
from harness.runtime import Device
from harness.vit import TOKEN_BACKBONES, gives_tokens

INIT_STD = 0.02


class NoTokens(ValueError):
    """An encoder without token features given to the attentive probe."""


class CrossAttentionPooler(nn.Module):
    """One learned query cross-attending to tokens [B, N, D] → [B, D] (V-JEPA's ``AttentivePooler``
    with one query and a complete ``CrossAttentionBlock``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attentive.heads {heads} must divide the token width {dim}")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.trunc_normal_(self.query, std=INIT_STD)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
        with torch.no_grad():  # V-JEPA's _rescale_blocks for its one block
            self.proj.weight.div_(math.sqrt(2.0))
            self.mlp[2].weight.div_(math.sqrt(2.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        heads = self.heads
        q = self.q(self.query.expand(batch, -1, -1)).view(batch, 1, heads, dim // heads).transpose(1, 2)
        kv = self.kv(self.norm1(tokens)).view(batch, length, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [B, heads, 1, D/heads]
        pooled = self.query + self.proj(attended.transpose(1, 2).reshape(batch, 1, dim))
        pooled = pooled + self.mlp(self.norm2(pooled))
        return pooled[:, 0]


class AttentiveClassifier(nn.Module):
    """``CrossAttentionPooler`` then a linear layer: tokens [B, N, D] → logits [B, classes]."""

    def __init__(self, dim: int, num_classes: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.pooler = CrossAttentionPooler(dim, heads, mlp_ratio)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=INIT_STD)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooler(tokens))


def probe_heads(encoder: nn.Module, dim: int, settings: AttentiveSpec) -> int:
    """``settings.heads``, else the encoder's ``num_heads`` (V-JEPA's choice), else width / 64 (at least 1)."""
    if settings.heads is not None:
        return settings.heads
    heads = getattr(encoder, "num_heads", None)
    return int(heads) if isinstance(heads, int) and dim % heads == 0 else max(1, dim // 64)


def samples(tokens: torch.Tensor, temporal: int) -> torch.Tensor:
    """Cached tokens [N, K·S, L, D] (views temporal-major) → one sample per spatial view with its
    K temporal views' tokens concatenated: [N, S, K·L, D]."""
    videos, views, length, dim = tokens.shape
    spatial = views // temporal
    by_view = tokens.view(videos, temporal, spatial, length, dim).transpose(1, 2)
    return by_view.reshape(videos, spatial, temporal * length, dim)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decay; biases, norms and the query (1-D, or named bias) don't, as V-JEPA's ``init_opt``."""
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        (plain if parameter.ndim == 1 or name.endswith("bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def fit_attentive(
    train: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    settings: AttentiveSpec,
    heads: int,
    seed: int = 0,
) -> AttentiveClassifier:
    """Train an ``AttentiveClassifier`` on samples ``train`` [M, N, D] (any float dtype, on their
    device; each minibatch goes to fp32) with targets ``labels`` [M]."""
    torch.manual_seed(seed)
    model = AttentiveClassifier(train.shape[-1], num_classes, heads, settings.mlp_ratio).to(train.device)
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    for lr, batch in minibatch_schedule(len(train), settings, seed, train.device):
        set_lr(optimizer, lr)
        loss = F.cross_entropy(model(train[batch].float()), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
        optimizer.step()
    return model


def attentive_probe(
    train_tokens: torch.Tensor,
    train_labels: torch.Tensor,
    test_tokens: torch.Tensor,
    test_labels: torch.Tensor,
    settings: AttentiveSpec,
    heads: int,
    train_temporal: int = 1,
    test_temporal: int = 1,
    seed: int = 0,
    device: Device = "cpu",
) -> dict[str, float]:
    """The attentive probe on cached tokens ``train_tokens`` [N, V, L, D] and ``test_tokens``
    [M, V', L, D] (views temporal-major, ``train_temporal`` / ``test_temporal`` temporal views):
    ``{"top1": %, "top5": %}`` on the test videos, their probabilities averaged over spatial views."""
    device = torch.device(device)
    train = samples(train_tokens, train_temporal).to(device)
    spatial = train.shape[1]
    targets = train_labels.repeat_interleave(spatial).to(device)
    model = fit_attentive(
        train.flatten(0, 1), targets, class_count(train_labels, test_labels), settings, heads, seed
    )
    test = samples(test_tokens, test_temporal)
    logits = []
    with torch.no_grad():
        for chunk in test.split(max(1, settings.batch_size // test.shape[1])):
            chunk = chunk.to(device)
            logits.append(model(chunk.flatten(0, 1).float()).view(*chunk.shape[:2], -1).cpu())
    return accuracy(view_probabilities(torch.cat(logits)), test_labels)


def require_tokens(encoder: nn.Module, benchmark: Benchmark) -> None:
    """Refuse an encoder without token features for a benchmark of the attentive protocol.

    Raises:
        NoTokens: naming the benchmark, the encoder's class and the backbones that give tokens.
    """
    if benchmark.protocol == "attentive" and not gives_tokens(encoder):
        raise NoTokens(
            f"benchmark {benchmark.name}: protocol attentive needs token features, and the encoder "
            f"({type(encoder).__name__}) gives none; use a video ViT backbone ({', '.join(TOKEN_BACKBONES)}) "
            "or the linear / kNN protocol"
        )


def run_attentive(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> dict[str, float]:
    """The attentive protocol of ``benchmark`` on ``encoder``'s cached token features: ``{"top1": %, "top5": %}``.

    Raises:
        NoTokens: the encoder gives no token features (a CNN or MViT backbone).
    """
    require_tokens(encoder, benchmark)
    train_tokens, train_labels, test_tokens, test_labels = cached_features(
        encoder, benchmark, context, tokens=True
    )
    views = benchmark.views
    return attentive_probe(
        train_tokens,
        train_labels,
        test_tokens,
        test_labels,
        benchmark.settings,
        probe_heads(encoder, train_tokens.shape[-1], benchmark.settings),
        views.train_temporal,
        views.test_temporal,
        seed=context.seed,
        device=context.runtime.device,
    )
