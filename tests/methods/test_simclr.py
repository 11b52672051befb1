"""ρSimCLR: NT-Xent against its published formula, the ρ-clip pair rule, one training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_helpers import assert_step_trains, build_method, make_batch

from methods._memory import embed_clips
from methods.simclr import nt_xent_loss, positive_accuracy


def _two_clip_loop(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> float:
    """SimCLR's loss for one clip pair, term by term: 2N anchors, 2N−1 candidates each."""
    embeddings = [F.normalize(v, dim=0) for v in [*za, *zb]]
    n = len(za)
    total = 0.0
    for i, anchor in enumerate(embeddings):
        positive = i + n if i < n else i - n
        others = [k for k in range(2 * n) if k != i]
        assert len(others) == 2 * n - 1
        numerator = math.exp(float(anchor @ embeddings[positive]) / temperature)
        denominator = sum(math.exp(float(anchor @ embeddings[k]) / temperature) for k in others)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize(
    ("num_clips", "pairs", "expected_pairs"),
    [
        (2, "all", [(0, 1)]),
        (3, "all", [(0, 1), (0, 2), (1, 2)]),
        (4, "adjacent", [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_nt_xent_matches_loop_formula(num_clips, pairs, expected_pairs):
    z = torch.randn(5, num_clips, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = sum(_two_clip_loop(z[:, a], z[:, b], 0.1) for a, b in expected_pairs) / len(expected_pairs)
    assert nt_xent_loss(z, temperature=0.1, pairs=pairs).item() == pytest.approx(expected, rel=1e-9)


def test_nt_xent_normalises_inside_and_is_symmetric_in_clip_order():
    z = torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(1))
    scaled = z * torch.rand(6, 3, 1) * 10
    torch.testing.assert_close(nt_xent_loss(scaled), nt_xent_loss(z))
    torch.testing.assert_close(nt_xent_loss(z.flip(1)), nt_xent_loss(z))


def test_nt_xent_minimal_when_positives_coincide_and_videos_are_apart():
    identity = torch.eye(4, dtype=torch.float64)[:, None, :].expand(4, 2, 4)
    loss = nt_xent_loss(identity, temperature=0.1)
    # Each anchor: its positive at similarity 1, 2N-2 = 6 negatives at 0.
    assert loss.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 6)), rel=1e-6)
    assert positive_accuracy(identity) == 1.0


def test_positive_accuracy_counts_hits():
    z = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(2))
    z[:, 1] = z[:, 0]
    assert positive_accuracy(z) == 1.0
    z[:4, 1] = -z[:4, 0]
    assert positive_accuracy(z) < 1.0


@pytest.mark.parametrize("rho", [1, 2, 3])
def test_step_trains(rho):
    method = build_method("simclr")
    out = assert_step_trains(method, make_batch(rho))
    assert set(out.metrics) == {"loss", "positive_accuracy", "embedding_std"}
    assert not out.backward_done


def test_step_loss_is_nt_xent_of_the_per_clip_projections():
    method = build_method("simclr", temperature=0.2, pairs="adjacent")
    batch = make_batch(3)
    loss = method.training_step(batch).loss
    projections = embed_clips(lambda clip: method.head(method.backbone(clip)), batch["clips"])
    torch.testing.assert_close(loss, nt_xent_loss(projections, temperature=0.2, pairs="adjacent"))


def test_head_follows_its_parameters():
    with_bn = build_method("simclr", hidden_dims=(32, 24), out_dim=8, head_batch_norm=True)
    without_bn = build_method("simclr", head_batch_norm=False)
    assert [m.out_features for m in with_bn.head if isinstance(m, torch.nn.Linear)] == [32, 24, 8]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn.head)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in without_bn.head)


@pytest.mark.parametrize(("param", "value"), [("pairs", "random"), ("memory", "tiny"), ("temperature", 0.0)])
def test_bad_arguments_fail(param, value):
    with pytest.raises(ValueError, match=param):
        build_method("simclr", **{param: value})
