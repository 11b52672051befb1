"""ρMoCo: InfoNCE against its formula, the key queue, the key encoder (its EMA: test_base.py), one training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_helpers import assert_step_trains, build_method, make_batch

from methods import KeyQueue
from methods._memory import embed_clips
from methods.moco import info_nce_loss


def _info_nce_loop(q, k, queue, temperature) -> float:
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(float(q[i] @ k[i]) / temperature)
        negatives = [math.exp(float(q[i] @ n) / temperature) for n in queue]
        assert len(negatives) == len(queue)
        total += -math.log(positive / (positive + sum(negatives)))
    return total / len(q)


def _queries_and_keys(method, clips):
    """The step's queries (online encoder) and keys (EMA encoder, no gradient), [N, V, D] each."""
    queries = embed_clips(lambda c: F.normalize(method.head(method.backbone(c)), dim=-1), clips)
    with torch.no_grad():
        keys = embed_clips(
            lambda c: F.normalize(method.target_head(method.target_backbone(c)), dim=-1), clips
        )
    return queries, keys


def test_info_nce_matches_loop_formula():
    generator = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(5, 8, generator=generator, dtype=torch.float64), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(7, 8, generator=generator, dtype=torch.float64), dim=1)
    expected = _info_nce_loop(q, k, queue, 0.1)
    assert info_nce_loss(q, k, queue, temperature=0.1).item() == pytest.approx(expected, rel=1e-9)


def test_queue_is_fifo_and_wraps_around():
    queue = KeyQueue(size=5, dim=2)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5)) and not queue.is_full
    rows = torch.arange(20, dtype=torch.float32).view(10, 2)
    queue.enqueue(rows[:3])
    torch.testing.assert_close(queue.keys[:3], rows[:3])
    assert int(queue.pointer) == 3 and int(queue.count) == 3 and not queue.is_full
    queue.enqueue(rows[3:6])  # rows 3, 4 then wrap: row 5 overwrites the oldest (row 0)
    torch.testing.assert_close(queue.keys, torch.stack([rows[5], rows[1], rows[2], rows[3], rows[4]]))
    assert int(queue.pointer) == 1 and queue.is_full
    queue.enqueue(rows[:7])  # more than fits: as if written one by one from pointer 1, rows 2..6 survive
    torch.testing.assert_close(queue.keys, torch.stack([rows[4], rows[5], rows[6], rows[2], rows[3]]))
    assert int(queue.pointer) == 3


@pytest.mark.parametrize("rho", [1, 2, 3])
def test_step_trains(rho):
    out = assert_step_trains(build_method("moco"), make_batch(rho))
    assert set(out.metrics) == {"loss", "positive_accuracy", "momentum", "embedding_std"}
    assert out.metrics["momentum"] == 0.994


def test_key_encoder_starts_as_copy_and_is_never_optimised():
    method = build_method("moco")
    for online, target in ((method.backbone, method.target_backbone), (method.head, method.target_head)):
        for p, t in zip(online.parameters(), target.parameters(), strict=True):
            assert torch.equal(p, t) and p is not t and not t.requires_grad
    optimised = {id(p) for group in method.param_groups(0.1) for p in group["params"]}
    assert not optimised & {id(p) for p in method.target_backbone.parameters()}
    assert not optimised & {id(p) for p in method.target_head.parameters()}


def test_step_loss_is_mean_over_ordered_pairs_and_all_keys_are_queued():
    method = build_method("moco", temperature=0.2)
    batch = make_batch(3)
    queue_before = method.queue.keys.clone()
    loss = method.training_step(batch).loss
    clips = batch["clips"]
    queries, keys = _queries_and_keys(method, clips)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    expected = sum(info_nce_loss(queries[:, a], keys[:, b], queue_before, 0.2) for a, b in pairs) / len(pairs)
    torch.testing.assert_close(loss, expected)
    # All 3 clips x 4 videos keys entered the queue, clip by clip, after the loss used the old queue.
    torch.testing.assert_close(method.queue.keys[:12], keys.transpose(0, 1).reshape(12, -1))
    torch.testing.assert_close(method.queue.keys[12:], queue_before[12:])
    assert int(method.queue.pointer) == 12


def test_head_has_no_batch_norm_by_default():
    method = build_method("moco")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in method.head)
    assert [m.out_features for m in method.head if isinstance(m, torch.nn.Linear)] == [32, 16]


def test_a_querys_own_video_in_the_queue_is_not_its_negative():
    method = build_method("moco", temperature=0.2)
    first = make_batch(2)
    method.training_step(first)
    # The queue now holds both clips' keys of videos 0..3 (clip-major), the rest still unknown.
    assert method.queue.videos[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert (method.queue.videos[8:] == -1).all()

    second = make_batch(2, seed=7)
    second["index"] = torch.tensor([2, 9, 0, 11])  # videos 2 and 0 again, 9 and 11 new
    queue, videos = method.queue.keys.clone(), method.queue.videos.clone()
    loss = method.training_step(second).loss
    clips = second["clips"]
    queries, keys = _queries_and_keys(method, clips)
    expected = 0.0
    for a, b in ((0, 1), (1, 0)):
        for i, video in enumerate(second["index"].tolist()):
            negatives = queue[videos != video]
            assert len(negatives) == 64 - (2 if video in (0, 2) else 0)
            expected += _info_nce_loop(queries[i : i + 1, a].detach(), keys[i : i + 1, b], negatives, 0.2) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    keep_all = build_method("moco", temperature=0.2, exclude_same_video=False)
    keep_all.training_step(first)
    assert keep_all.training_step(second).loss.item() != pytest.approx(expected, rel=1e-3)


def test_a_queue_saved_before_videos_were_kept_loads_with_them_unknown():
    queue = KeyQueue(size=4, dim=2)
    queue.enqueue(torch.ones(2, 2), torch.tensor([5, 6]))
    old = {k: v for k, v in queue.state_dict().items() if k != "videos"}
    fresh = KeyQueue(size=4, dim=2)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.keys, queue.keys) and (fresh.videos == -1).all()
