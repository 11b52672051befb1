"""ρSwAV: Sinkhorn and the swapped prediction against their formulas, prototypes, queue, one step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_helpers import assert_step_trains, build_method, make_batch, sgd_step

from methods._memory import embed_clips
from methods.swav import sinkhorn, swapped_prediction_loss


def _scores(batch: int = 12, prototypes: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, 8, generator=generator, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(prototypes, 8, generator=generator, dtype=torch.float64), dim=1)
    return z @ c.T


def _sinkhorn_loop(scores: torch.Tensor, epsilon: float, iterations: int) -> list[list[float]]:
    """Sinkhorn-Knopp as published (SwAV Alg. / Cuturi 2013), with explicit loops over B x K."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / epsilon) for j in range(k)] for i in range(b)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):  # every prototype gets total mass 1/K
            col = sum(q[i][j] for i in range(b))
            for i in range(b):
                q[i][j] /= col * k
        for i in range(b):  # every sample gets total mass 1/B
            row = sum(q[i])
            q[i] = [v / (row * b) for v in q[i]]
    return [[v / sum(row) for v in row] for row in q]


@pytest.mark.parametrize("iterations", [0, 1, 3, 7])
def test_sinkhorn_matches_loop_formula(iterations):
    scores = _scores()
    expected = torch.tensor(_sinkhorn_loop(scores, 0.05, iterations), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn(scores, epsilon=0.05, iterations=iterations), expected)


def test_sinkhorn_marginals_converge():
    scores = _scores()
    batch, prototypes = scores.shape
    errors = []
    for iterations in (1, 3, 10, 30, 300):
        codes = sinkhorn(scores, epsilon=0.05, iterations=iterations)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(batch, dtype=codes.dtype))
        errors.append((codes.sum(dim=0) - batch / prototypes).abs().max().item())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-6, errors


def test_sinkhorn_is_stable_for_small_epsilon_and_ignores_a_shift():
    scores = _scores()
    codes = sinkhorn(scores.float(), epsilon=0.005, iterations=3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(sinkhorn(scores + 3.0, 0.05, 3), sinkhorn(scores, 0.05, 3))


def _swapped_loop(scores: torch.Tensor, codes: torch.Tensor, temperature: float) -> float:
    n, v, k = scores.shape
    terms = []
    for c in range(codes.shape[1]):
        for clip in range(v):
            if clip == c:
                continue
            total = 0.0
            for i in range(n):
                logits = [float(scores[i, clip, j]) / temperature for j in range(k)]
                log_z = math.log(sum(math.exp(x) for x in logits))
                total += -sum(float(codes[i, c, j]) * (logits[j] - log_z) for j in range(k))
            terms.append(total / n)
    return sum(terms) / len(terms)


@pytest.mark.parametrize(("num_clips", "code_clips"), [(2, 2), (3, 2), (3, 3)])
def test_swapped_prediction_matches_loop_formula(num_clips, code_clips):
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(4, num_clips, 6, generator=generator, dtype=torch.float64)
    codes = torch.rand(4, code_clips, 6, generator=generator, dtype=torch.float64)
    codes = codes / codes.sum(dim=-1, keepdim=True)
    expected = _swapped_loop(scores, codes, 0.1)
    assert swapped_prediction_loss(scores, codes, 0.1).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("rho", [1, 2, 3])
def test_step_trains(rho):
    method = build_method("swav")
    method.on_epoch_start(1)
    out = assert_step_trains(method, make_batch(rho))
    assert set(out.metrics) == {"loss", "embedding_std", "prototypes_used"}


def test_prototypes_are_normalised_every_step():
    method = build_method("swav")
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.training_step(make_batch(2))
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(10))
    assert method.prototypes.weight.shape == (10, 16)


def test_prototypes_frozen_in_first_epoch_only():
    method = build_method("swav", freeze_prototypes_epochs=1)
    batch = make_batch(2)
    sgd_step(method, batch)  # epoch 0 by default
    assert method.prototypes.weight.grad is None
    assert method.head[0].weight.grad is not None
    method.on_epoch_start(1)
    before = method.prototypes.weight.detach().clone()
    sgd_step(method, batch)
    assert method.prototypes.weight.grad is not None
    assert not torch.equal(method.prototypes.weight, before)
    assert any(p is method.prototypes.weight for group in method.param_groups(0.0) for p in group["params"])


@pytest.mark.parametrize(("codes_from", "code_clips"), [("first_two", 2), ("all", 3)])
def test_step_loss_is_swapped_prediction_of_sinkhorn_codes(codes_from, code_clips):
    method = build_method("swav", codes_from=codes_from, temperature=0.2)
    method.on_epoch_start(1)
    batch = make_batch(3)
    loss = method.training_step(batch).loss
    prototypes = method.prototypes.weight
    z = embed_clips(lambda clip: F.normalize(method.head(method.backbone(clip)), dim=-1), batch["clips"])
    scores = z @ prototypes.T
    codes = torch.stack([sinkhorn(scores[:, c], 0.05, 3) for c in range(code_clips)], dim=1)
    torch.testing.assert_close(loss, swapped_prediction_loss(scores, codes, 0.2))


def test_queue_fills_from_its_start_epoch_and_joins_sinkhorn_when_full():
    method = build_method("swav", queue_size=16, queue_start_epoch=1)
    batch = make_batch(3)  # 4 videos, 2 code clips: 8 embeddings per step
    method.training_step(batch)
    assert int(method.queue.count) == 0
    method.on_epoch_start(1)
    method.training_step(batch)
    assert int(method.queue.count) == 8 and not method.queue.is_full
    method.training_step(batch)
    assert method.queue.is_full
    # Now the codes are computed with the queued embeddings: they differ from batch-only codes.
    method.eval()  # fixed BN statistics, so embeddings are reproducible
    with torch.no_grad():
        z = F.normalize(method.head(method.backbone(batch["clips"][:, 0])), dim=-1)
        prototypes = F.normalize(method.prototypes.weight, dim=1)
        scores = z @ prototypes.T
        with_queue = method._codes(scores, prototypes)
        expected = sinkhorn(torch.cat([method.queue.keys @ prototypes.T, scores]), 0.05, 3)[-4:]
    torch.testing.assert_close(with_queue, expected)
    assert not torch.allclose(with_queue, sinkhorn(scores, 0.05, 3))


@pytest.mark.parametrize(("param", "value"), [("codes_from", "first"), ("memory", "high"), ("epsilon", 0.0)])
def test_bad_arguments_fail(param, value):
    with pytest.raises(ValueError, match=param):
        build_method("swav", **{param: value})
