"""Per-clip forward passes and the low-memory (gradient-caching) backward.

BatchNorm: every method forwards each clip as its own batch of B samples, in standard and in
low-memory mode alike, so BatchNorm statistics are computed over the same samples either
way and the two modes give the same gradients. (Forwarding all ρ clips as one batch of ρB
would change the statistics, and with them the loss.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

MEMORY_MODES = ("standard", "low")


def embed_clips(embed: Callable[[Tensor], Tensor], clips: Tensor) -> Tensor:
    """Apply ``embed`` to each clip as its own batch: clips [B, V, C, T, H, W] -> [B, V, D]."""
    return torch.stack([embed(clips[:, view]) for view in range(clips.shape[1])], dim=1)


@contextmanager
def preserved_buffers(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Restore the modules' buffers (BatchNorm running statistics) on exit to their values on entry."""
    saved = [(buffer, buffer.detach().clone()) for module in modules for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def gradient_cached_backward(
    embed: Callable[[Tensor], Tensor],
    clips: Tensor,
    loss_fn: Callable[[Tensor], tuple[Tensor, dict[str, float]]],
    stateful: Iterable[nn.Module],
) -> tuple[Tensor, dict[str, float]]:
    """Back-propagate ``loss_fn(embed_clips(embed, clips))`` while holding one clip's activations at a time.

    Gradient caching (Gao et al. 2021) for losses that couple all clips (SimCLR, SwAV):
    1. embed every clip without a graph; 2. evaluate the loss on those embeddings as a leaf and
    back-propagate it, which yields d loss / d embeddings (and the gradients of parameters the
    loss uses directly, e.g. SwAV's prototypes); 3. re-embed each clip with a graph and
    back-propagate that cached gradient into the encoder. The parameter gradients equal those
    of ``loss.backward()`` on the full graph.

    Step 3 repeats step 1's forward passes, which would update BatchNorm running statistics a
    second time; the buffers of ``stateful`` (the online encoder's modules) are restored after
    step 3, so they end as after one forward of each clip, as in standard mode.

    Args:
        embed: one clip batch [B, C, T, H, W] -> embeddings [B, D].
        clips: [B, V, C, T, H, W].
        loss_fn: embeddings [B, V, D] -> (scalar loss, metrics); called exactly once.
        stateful: modules whose buffers ``embed`` updates (backbone and heads).

    Returns:
        The detached loss and the metrics of ``loss_fn``.
    """
    with torch.no_grad():
        embeddings = embed_clips(embed, clips)
    embeddings.requires_grad_(True)
    loss, metrics = loss_fn(embeddings)
    loss.backward()
    cached_grad = embeddings.grad
    with preserved_buffers(stateful):
        for view in range(clips.shape[1]):
            embed(clips[:, view]).backward(cached_grad[:, view])
    return loss.detach(), metrics


def coupled_loss(
    embed: Callable[[Tensor], Tensor],
    clips: Tensor,
    loss_fn: Callable[[Tensor], tuple[Tensor, dict[str, float]]],
    stateful: Iterable[nn.Module],
    memory: str,
) -> tuple[Tensor, dict[str, float], bool]:
    """``loss_fn(embed_clips(embed, clips))`` for a loss that couples all clips, by gradient caching when ``memory`` is ``"low"``.

    Returns:
        (loss, metrics, backward_done): in low-memory mode the loss is already back-propagated
        and detached (``gradient_cached_backward``) and backward_done is True.
    """
    if memory == "low":
        loss, metrics = gradient_cached_backward(embed, clips, loss_fn, stateful)
        return loss, metrics, True
    loss, metrics = loss_fn(embed_clips(embed, clips))
    return loss, metrics, False


def clip_loss(loss: Tensor, memory: str) -> Tensor:
    """One clip's term of a per-clip loss: back-propagated at once and detached when ``memory`` is ``"low"``.

    Low-memory mode frees each clip's graph before the next clip is forwarded; in standard
    mode the term keeps its graph for the engine's ``loss.backward()``.
    """
    if memory == "low":
        loss.backward()
        return loss.detach()
    return loss
