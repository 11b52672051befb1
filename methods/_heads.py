"""The MLP heads (projectors, predictors) the methods put on top of the backbone."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """Linear layers with ReLU between them: ``in_dim -> hidden_dims... -> out_dim``.

    Args:
        in_dim: input width (the backbone's feature_dim, or a projector's out_dim).
        hidden_dims: widths of the hidden layers; each is Linear (-> BatchNorm1d) -> ReLU.
        out_dim: output width; the last layer is a plain Linear (no norm, no activation).
        batch_norm: BatchNorm1d after each hidden Linear (SimCLR, SwAV, BYOL; not MoCo v2).
            Those Linears then have no bias, which the norm would cancel.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers.append(nn.Linear(width, hidden, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)
