"""harness.distributed: identity in one process; over 2 real gloo ranks, equal to one process on the whole batch.

The two-rank checks run once (one spawn, module-scoped) and each test compares one part of
what the ranks computed with the single-process result over the concatenated 2N samples:
the collectives, shuffle-BN, SimCLR's loss and gradient, Sinkhorn codes, MoCo's queue, and a
whole SimCLR step (standard and low-memory) synchronised with ``average_gradients``.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import harness.distributed as hd
from methods.moco import MoCo
from methods.simclr import SimCLR, nt_xent_loss
from methods.swav import sinkhorn

WORLD_SIZE = 2
N = 3  # samples per rank


def _inputs() -> dict[str, torch.Tensor]:
    """The global batch of 2N samples every rank (and the single process) starts from."""
    generator = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(WORLD_SIZE * N, 5, generator=generator),
        "weights": torch.randn(WORLD_SIZE * N, 5, generator=generator),
        "z": torch.randn(WORLD_SIZE * N, 3, 8, generator=generator),
        "scores": torch.nn.functional.normalize(torch.randn(WORLD_SIZE * N, 4, generator=generator), dim=1),
        "keys": torch.randn(WORLD_SIZE * N, 2, 4, generator=generator),
        "clips": torch.randn(WORLD_SIZE * N, 3, 3, 2, 4, 4, generator=generator),
    }


def _local(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    return tensor[rank * N : (rank + 1) * N]


def _moco(queue_per_rank: bool) -> MoCo:
    torch.manual_seed(0)
    return MoCo(nn.Flatten(), 8, hidden_dims=(), out_dim=4, queue_size=16, queue_per_rank=queue_per_rank)


def _simclr(memory: str, seed: int = 0) -> SimCLR:
    """SimCLR on a BatchNorm-free backbone, so that per-rank batches compute what one process does."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 8))
    return SimCLR(backbone, 8, hidden_dims=(16,), out_dim=8, head_batch_norm=False, memory=memory)


def _simclr_step(method: SimCLR, clips: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = method.training_step({"clips": clips})
    if not out.backward_done:
        out.loss.backward()
    hd.average_gradients(method.parameters())
    return out.loss.detach(), {name: p.grad.clone() for name, p in method.named_parameters()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        full = _inputs()
        results: dict = {
            "is_distributed": hd.is_distributed(),
            "rank": hd.rank(),
            "world_size": hd.world_size(),
        }

        x = _local(full["x"], rank).clone().requires_grad_(True)
        gathered = hd.gather_with_grad(x)
        (gathered * full["weights"]).sum().backward()
        results |= {"gathered": gathered.detach(), "gather_grad": x.grad}
        results["all_gather"] = hd.all_gather_no_grad(_local(full["x"], rank))
        results["sum"] = hd.all_reduce_sum(torch.tensor([rank + 1.0]))
        results["max"] = hd.all_reduce_max(torch.tensor([rank + 1.0]))

        # Each rank draws its own permutation (so a missing broadcast would show); rank 0's,
        # which every rank must use, is fixed so that the mixing assertion cannot flake.
        torch.manual_seed(rank)
        shuffled, permutation = hd.shuffle_batch(_local(full["x"], rank))
        results["shuffled"] = shuffled
        results["unshuffled"] = hd.unshuffle_batch(2 * shuffled, permutation)

        z = _local(full["z"], rank).clone().requires_grad_(True)
        loss = nt_xent_loss(z, temperature=0.1)
        loss.backward()
        results |= {"nt_xent_loss": loss.detach(), "nt_xent_grad": z.grad}

        results["codes"] = sinkhorn(_local(full["scores"], rank), epsilon=0.05, iterations=3)

        for per_rank in (False, True):
            moco = _moco(queue_per_rank=per_rank)
            moco.enqueue_keys(_local(full["keys"], rank))
            results[f"queue_per_rank={per_rank}"] = moco.queue.keys.clone()

        for size in (1, 2, None):  # BN sync groups (backbone.sync_bn_group)
            group = hd.sync_group(size)
            total = torch.tensor([rank + 1.0])
            dist.all_reduce(total, group=group)
            results[f"sync_group={size}"] = total
        try:
            hd.sync_group(3)
        except ValueError as exc:
            results["sync_group=3"] = str(exc)

        for memory in ("standard", "low"):
            method = _simclr(memory, seed=rank)  # different weights per rank until broadcast
            hd.broadcast_state(method)
            results[f"simclr_{memory}"] = _simclr_step(method, _local(full["clips"], rank))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of 2 gloo ranks computed (one spawn for all the checks)."""
    root = tmp_path_factory.mktemp("distributed")
    context = mp.spawn(_worker, args=(str(root / "init"), str(root)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("distributed workers did not finish within 180 s")
    return [torch.load(root / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def test_single_process_is_identity():
    x = torch.randn(4, 3, requires_grad=True)
    assert not hd.is_distributed() and hd.rank() == 0 and hd.world_size() == 1
    assert hd.gather_with_grad(x) is x
    torch.testing.assert_close(hd.all_gather_no_grad(x), x.detach())
    total = hd.all_reduce_sum(x)
    torch.testing.assert_close(total, x.detach())
    total += 1  # a copy: x is untouched
    assert not torch.equal(total, x.detach())
    torch.testing.assert_close(hd.all_reduce_max(x), x.detach())
    shuffled, permutation = hd.shuffle_batch(x)
    assert shuffled is x and permutation is None and hd.unshuffle_batch(x, None) is x
    module = nn.Linear(3, 2)
    module(x).sum().backward()
    grad = module.weight.grad.clone()
    hd.average_gradients(module.parameters())
    hd.broadcast_state(module)
    torch.testing.assert_close(module.weight.grad, grad)


def test_process_group(ranks):
    for rank, result in enumerate(ranks):
        assert result["is_distributed"] is True
        assert (result["rank"], result["world_size"]) == (rank, WORLD_SIZE)


def test_gather_with_grad(ranks):
    full = _inputs()
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["gathered"], full["x"])
        # Every rank's loss sees this rank's rows: the gradient sums over ranks.
        torch.testing.assert_close(result["gather_grad"], WORLD_SIZE * _local(full["weights"], rank))
        torch.testing.assert_close(result["all_gather"], full["x"])
        assert result["sum"].item() == 3.0 and result["max"].item() == 2.0


def test_shuffle_bn_round_trip_mixes_ranks(ranks):
    full = _inputs()
    shuffled = torch.cat([result["shuffled"] for result in ranks])
    order = [int((full["x"] == row).all(dim=1).nonzero()) for row in shuffled]
    assert sorted(order) == list(range(WORLD_SIZE * N))  # a permutation of the global batch
    assert any(index >= N for index in order[:N]), order  # rank 0 got some of rank 1's samples
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["unshuffled"], 2 * _local(full["x"], rank))


def test_simclr_loss_and_gradient_match_one_process(ranks):
    full = _inputs()
    z = full["z"].clone().requires_grad_(True)
    loss = nt_xent_loss(z, temperature=0.1)
    loss.backward()
    mean_loss = torch.stack([result["nt_xent_loss"] for result in ranks]).mean()
    torch.testing.assert_close(mean_loss, loss.detach())
    # Rank gradients are of the sum of the ranks' losses; DDP-style averaging divides by world size.
    grads = torch.cat([result["nt_xent_grad"] for result in ranks]) / WORLD_SIZE
    torch.testing.assert_close(grads, z.grad)
    assert loss.detach() != pytest.approx(ranks[0]["nt_xent_loss"].item())  # negatives did cross ranks


def test_sinkhorn_codes_match_one_process(ranks):
    codes = torch.cat([result["codes"] for result in ranks])
    torch.testing.assert_close(codes, sinkhorn(_inputs()["scores"], epsilon=0.05, iterations=3))


def test_moco_queue_matches_one_process(ranks):
    full = _inputs()
    single = _moco(queue_per_rank=False)
    single.enqueue_keys(full["keys"])
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["queue_per_rank=False"], single.queue.keys)
        own = _moco(queue_per_rank=True)
        own.enqueue_keys(_local(full["keys"], rank))
        torch.testing.assert_close(result["queue_per_rank=True"], own.queue.keys)
    # Global queue: all 2N videos x 2 clips, clip by clip.
    torch.testing.assert_close(
        single.queue.keys[: 2 * WORLD_SIZE * N], full["keys"].transpose(0, 1).reshape(-1, 4)
    )


@pytest.mark.parametrize("memory", ["standard", "low"])
def test_simclr_step_matches_one_process(ranks, memory):
    clips = _inputs()["clips"]
    loss, grads = _simclr_step(_simclr(memory, seed=0), clips)
    mean_loss = torch.stack([result[f"simclr_{memory}"][0] for result in ranks]).mean()
    torch.testing.assert_close(mean_loss, loss)
    for result in ranks:
        rank_grads = result[f"simclr_{memory}"][1]
        for name, grad in grads.items():
            torch.testing.assert_close(rank_grads[name], grad, msg=lambda m, n=name: f"{n}: {m}")


def test_bn_sync_groups_reduce_within_their_ranks(ranks):
    """``backbone.sync_bn_group`` (SlowFast's BN.NUM_SYNC_DEVICES): a group of 1 rank sums only
    its own value, a group of 2 (or the whole world) both ranks' 1 + 2; 3 does not fit in 2."""
    for rank, result in enumerate(ranks):
        assert result["sync_group=1"].item() == rank + 1.0
        assert result["sync_group=2"].item() == result["sync_group=None"].item() == 3.0
        assert "larger than the 2 ranks" in result["sync_group=3"]
    assert hd.sync_group(4) is None, "no process group: the whole (one-process) world"
