"""torch.distributed helpers that are the identity in a single process.

The methods use these for cross-rank negatives (SimCLR), Sinkhorn sums (SwAV), the global key
queue and shuffle-BN (MoCo); the engine uses ``average_gradients`` and ``broadcast_state`` to
keep the ranks' copies of a method in step. "Distributed" means an initialised process group
with more than one rank; otherwise every function returns its input (or does nothing), so
the same code runs in one process without a process group.

Collectives that concatenate (``gather_with_grad``, ``all_gather_no_grad``, the shuffles)
need the same shape on every rank.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        size = grad.shape[0] // world_size()
        return grad[rank() * size : (rank() + 1) * size]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [N, ...] from all ranks in rank order -> [world_size * N, ...], with gradient.

    The backward pass gives this rank's ``x`` the sum over ranks of the gradients that reach
    its slice, i.e. the gradient of the sum of all ranks' losses. Averaging parameter gradients
    over ranks (DDP, ``average_gradients``) then yields the gradient of the mean loss, which is
    the single-process loss over the whole global batch when each rank averages over its own
    N anchors. Identity in a single process.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [N, ...] from all ranks in rank order -> [world_size * N, ...], no gradient."""
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Element-wise sum of ``x`` over ranks, as a new tensor (``x`` is left as it is); no gradient."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over ranks, as a new tensor; no gradient."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def max_over_ranks(value: int, device: torch.device | str = "cpu") -> int:
    """The largest of every rank's ``value`` (one all-reduce of one number; on ``device``, which
    must be the process group's: CUDA under NCCL); ``value`` itself in one process. Every rank
    must call it the same number of times."""
    if not is_distributed():
        return value
    x = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return int(x.item())


@torch.no_grad()
def shuffle_batch(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Shuffle-BN, step 1: a random batch of the same size drawn from all ranks' samples.

    MoCo's key encoder sees a batch mixed across ranks so that BatchNorm statistics cannot
    leak which key belongs to which query (He et al. 2020, "shuffling BN").

    Args:
        x: this rank's batch [N, ...].

    Returns:
        The shuffled local batch [N, ...] and the global permutation (``None`` in a single
        process, where ``x`` comes back unchanged) to hand to ``unshuffle_batch``.
    """
    if not is_distributed():
        return x, None
    gathered = all_gather_no_grad(x)
    permutation = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(permutation, src=0)
    size = x.shape[0]
    return gathered[permutation[rank() * size : (rank() + 1) * size]], permutation


@torch.no_grad()
def unshuffle_batch(y: Tensor, permutation: Tensor | None) -> Tensor:
    """Shuffle-BN, step 2: bring per-sample outputs ``y`` [N, ...] of a shuffled batch back home.

    Returns ``y`` rows in the order of this rank's original batch.
    """
    if permutation is None:
        return y
    gathered = all_gather_no_grad(y)
    restored = torch.empty_like(gathered)
    restored[permutation] = gathered
    size = y.shape[0]
    return restored[rank() * size : (rank() + 1) * size]


@torch.no_grad()
def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each ``.grad`` by its mean over ranks (one coalesced all-reduce); no-op in one process.

    The engine's gradient sync in place of DDP: it works whether the loss's backward ran in
    the engine or inside ``training_step`` (low-memory mode, several backward passes per step).
    Parameters whose ``.grad`` is None are skipped; which those are must agree across ranks
    (it does: it depends only on the method's state, e.g. SwAV's frozen prototypes).
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank; ``obj`` itself in one process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def raise_from_rank(error: Exception | None, src: int = 0) -> None:
    """Raise rank ``src``'s ``error`` on every rank; return on every rank when it is None there.

    For a check made on rank ``src`` alone (a manifest's files looked up once, not once a rank,
    on a file system where each look-up is a round trip): every rank passes what it met, and
    all then fail alike with ``src``'s message, or all go on. ``src`` raises ``error`` itself;
    the others a copy (an exception that does not survive pickling comes as one of its class
    with the same message, or a ``RuntimeError`` naming the class where the class cannot be
    pickled). Every rank must call it; in one process it raises ``error`` if there is one.
    """
    if not is_distributed():
        if error is not None:
            raise error
        return
    verdict: object = None
    if rank() == src and error is not None:
        verdict = _portable(error)
    verdict = broadcast_object(verdict, src)
    if verdict is None:
        return
    if rank() == src:
        raise error  # type: ignore[misc]  # not None on src when the verdict is not
    if isinstance(verdict, BaseException):
        raise verdict
    kind, message = verdict  # type: ignore[misc]
    copy = kind.__new__(kind)  # without __init__, which may take other arguments (ConfigError)
    copy.args = (message,)
    raise copy


def _portable(error: Exception) -> object:
    """``error`` itself where it survives pickling, else (its class, its message), else
    (``RuntimeError``, its class and message)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        pass
    try:
        pickle.dumps(type(error))
        return type(error), str(error)
    except Exception:
        return RuntimeError, f"{type(error).__name__}: {error}"


@torch.no_grad()
def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module``; no-op in one process."""
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=src)


def sync_group(size: int | None) -> dist.ProcessGroup | None:
    """The process group of this rank's ``size`` consecutive ranks (0..size-1, size..2·size-1, …),
    for SyncBatchNorm over groups of devices as SlowFast's ``BN.NUM_SYNC_DEVICES``; None (the
    whole world) when ``size`` is None, covers every rank, or there is no process group. Every
    rank must call it (each group is created on all ranks, in the same order).

    Raises:
        ValueError: ``size`` does not divide the world size.
    """
    world = world_size()
    if size is None or not is_distributed() or size >= world:
        if size is not None and is_distributed() and size > world:
            raise ValueError(f"a sync group of {size} ranks is larger than the {world} ranks of this run")
        return None
    if world % size:
        raise ValueError(f"a sync group of {size} ranks does not divide the {world} ranks of this run")
    own = None
    for start in range(0, world, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank() < start + size:
            own = group
    return own
