"""Cheap training diagnostics shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def embedding_std(embeddings: Tensor) -> float:
    """Collapse monitor: per-dimension std over the batch of L2-normalised embeddings, averaged.

    ``embeddings`` [..., D] (leading dims flattened into the batch). About ``1/sqrt(D)`` for
    embeddings spread over the sphere; 0 when every sample maps to the same point.
    """
    flat = F.normalize(embeddings.reshape(-1, embeddings.shape[-1]).float(), dim=1)
    return flat.std(dim=0).mean().item()
