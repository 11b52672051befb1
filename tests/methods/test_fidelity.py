"""Fidelity to facebookresearch/SlowFast's contrastive_ssl: the rows "same" of docs/fidelity.md.

Each test builds SlowFast's computation here, written from its code (``slowfast/models/
contrastive.py``, ``head_helper.py``, ``optimizer.py``, ``utils/lr_policy.py``; file:line in
each docstring), not by calling our loss functions, and compares the numbers with what our
methods, optimiser and schedule compute on the same tensors. The networks themselves (our
backbone and heads, their weights) are shared: what is checked is the loss, its reduction over
the ρ clips, and so the gradient scale, for ρ = 2, 3, 4.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from method_helpers import build_method, make_batch
from queue_ranks import WORLD_SIZE, queue_batch, queue_moco, queue_worker
from torch import nn

import methods
from harness.config import load_experiment
from harness.optim import LARS, build_optimizer
from harness.train.loop import Schedule
from methods.base import weight_decay_groups
from methods.moco import MoCo

ROOT = Path(__file__).resolve().parents[2]
RHOS = [2, 3, 4]


def _l2(x: torch.Tensor) -> torch.Tensor:
    """SlowFast's ``Normalize`` (contrastive.py:875): x / ||x||_2 along dim 1."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _ours(method: methods.SSLMethod, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """One step of our method: its loss and the gradients it leaves."""
    out = method.training_step(batch)
    if not out.backward_done:
        out.loss.backward()
    return out.loss.item(), _grads(method)


def _assert_same_grads(ours: dict, reference: dict, scale: float = 1.0) -> None:
    """Equal up to float32 sums in another order: tolerance relative to the largest gradient entry.

    (Some gradients are zero up to rounding, e.g. a projector's last bias ahead of a BatchNorm.)"""
    assert ours.keys() == reference.keys()
    largest = max(grad.abs().max() for grad in reference.values()) * abs(scale)
    for name, grad in reference.items():
        torch.testing.assert_close(ours[name], scale * grad, rtol=1e-4, atol=1e-6 * largest, msg=name)


# --- ρMoCo --------------------------------------------------------------------------------------


def _slowfast_moco(method: MoCo, clips: torch.Tensor, queue: torch.Tensor) -> tuple[torch.Tensor, list]:
    """contrastive_forward (contrastive.py:1058-1096, SEQUENTIAL) with the moco branch (:424-483).

    Keys of all ρ clips from the momentum encoder; then for each query clip k one forward whose
    logits stack, for every other clip's key, [q·key, q·queue] (:467-473), one cross-entropy
    with target 0 and reduction mean over those rows (losses.py ContrastiveLoss), and its own
    ``backward`` (:1088): the ρ losses add up.
    """
    rho = clips.shape[1]
    with torch.no_grad():
        keys = [_l2(method.target_head(method.target_backbone(clips[:, t]))) for t in range(rho)]
    total = 0.0
    for k in range(rho):
        q = _l2(method.head(method.backbone(clips[:, k])))
        queue_neg = torch.einsum("nc,kc->nk", q, queue)
        logits = torch.cat(
            [
                torch.cat([torch.einsum("nc,nc->n", q, key)[:, None], queue_neg], 1)
                for key in keys[:k] + keys[k + 1 :]
            ]
        )
        logits = logits / method.temperature
        loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))
        loss.backward()
        total = total + loss.detach()
    return total, keys


@pytest.mark.parametrize("rho", RHOS)
def test_moco_slowfast_reduction_equals_slowfast_loss_and_mean_is_rho_times_smaller(rho):
    batch = make_batch(rho)
    params = {"exclude_same_video": False, "temperature": 0.1}
    reference = build_method("moco", **params)
    slowfast, mean = copy.deepcopy(reference), copy.deepcopy(reference)
    slowfast.loss_reduction = "slowfast"
    queue = reference.queue.keys.clone()
    expected, keys = _slowfast_moco(reference, batch["clips"], queue)
    loss, grads = _ours(slowfast, batch)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    _assert_same_grads(grads, _grads(reference))
    # MOCO_MULTI_VIEW_QUEUE (MoCo_SlowR50_8x8.yaml:21, contrastive.py:262-281): all ρ keys, clip by clip
    torch.testing.assert_close(slowfast.queue.keys[: rho * len(keys[0])], torch.cat(keys), rtol=0, atol=1e-6)
    mean_loss, mean_grads = _ours(mean, batch)
    assert loss == pytest.approx(rho * mean_loss, rel=1e-5)
    _assert_same_grads(grads, mean_grads, scale=rho)  # under SGD: ρ times our default's step


def test_momentum_encoder_update_is_slowfasts():
    """momentum_anneal_cosine (contrastive.py:245-252) at epoch_exact = progress · MAX_EPOCH, and
    _update_history (:152-166): p_hist = p · (1 - m) + p_hist · m."""
    method = build_method("moco")
    online = {name: p.detach().clone() for name, p in method.backbone.named_parameters()}
    with torch.no_grad():
        for p in method.target_backbone.parameters():
            p.add_(torch.randn_like(p))
    target = {name: p.detach().clone() for name, p in method.target_backbone.named_parameters()}
    progress, max_epoch, base = 0.37, 200, 0.994
    m = 1 - (1 - base) * (math.cos(math.pi * (progress * max_epoch) / max_epoch) + 1.0) * 0.5
    method.on_step_end(progress)
    assert method.momentum == pytest.approx(m)
    for name, p in method.target_backbone.named_parameters():
        torch.testing.assert_close(p, online[name] * (1.0 - m) + target[name] * m, msg=name)


# --- ρBYOL --------------------------------------------------------------------------------------


def _slowfast_byol(method: methods.SSLMethod, clips: torch.Tensor) -> torch.Tensor:
    """contrastive_forward (:1058-1096) with the byol branch, SEQUENTIAL (:531-535).

    Per query clip k: ``sum_t sim_loss(pred_k, key_t) / (ρ-1)`` over the other clips, with
    ``sim_loss = -mean(p·k) / T`` (:237-243, T = 0.5 in BYOL_SlowR50_8x8.yaml), p the
    normalised predictor output of the projection (head_helper.py:330-336), keys the
    normalised projections of the momentum network (:339); each k back-propagated on its own.
    """
    rho, temperature = clips.shape[1], 0.5
    with torch.no_grad():
        keys = [_l2(method.target_projector(method.target_backbone(clips[:, t]))) for t in range(rho)]
    total = 0.0
    for k in range(rho):
        prediction = _l2(method.predictor(method.projector(method.backbone(clips[:, k]))))
        others = keys[:k] + keys[k + 1 :]
        loss = sum(-(torch.einsum("nc,nc->n", prediction, key) / temperature).mean() for key in others)
        loss = loss / len(others)
        loss.backward()
        total = total + loss.detach()
    return total


@pytest.mark.parametrize("rho", RHOS)
def test_byol_slowfast_reduction_equals_slowfast_gradient(rho):
    batch = make_batch(rho)
    reference = build_method("byol")
    slowfast, mean = copy.deepcopy(reference), copy.deepcopy(reference)
    slowfast.loss_reduction = "slowfast"
    expected = _slowfast_byol(reference, batch["clips"])
    loss, grads = _ours(slowfast, batch)
    # ours is 2 - 2cos per pair, SlowFast's -2cos: the loss differs by 2 per query clip, not the gradient
    assert loss == pytest.approx(expected.item() + 2 * rho, rel=1e-5)
    _assert_same_grads(grads, _grads(reference))
    mean_loss, mean_grads = _ours(mean, batch)
    assert loss == pytest.approx(rho * mean_loss, rel=1e-5)
    _assert_same_grads(grads, mean_grads, scale=rho)


# --- ρSimCLR ------------------------------------------------------------------------------------


def _slowfast_simclr_pair(q: torch.Tensor, q2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The simclr branch (contrastive.py:727-745; one process, so no all-gather)."""
    out = torch.cat([q, q2], dim=0)
    sim_matrix = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = (torch.ones_like(sim_matrix) - torch.eye(out.shape[0])).bool()
    sim_matrix = sim_matrix.masked_select(mask).view(out.shape[0], -1)
    pos_sim = torch.exp(torch.sum(q * q2, dim=-1) / temperature)
    pos_sim = torch.cat([pos_sim, pos_sim], dim=0)
    return (-torch.log(pos_sim / sim_matrix.sum(dim=-1))).mean()


def _slowfast_simclr(method: methods.SSLMethod, clips: torch.Tensor) -> torch.Tensor:
    """contrastive_forward (:1082-1088): inputs k and k+1 for k < ρ-1, each pair's loss back-propagated."""
    total = 0.0
    for k in range(clips.shape[1] - 1):
        q = _l2(method.head(method.backbone(clips[:, k])))
        q2 = _l2(method.head(method.backbone(clips[:, k + 1])))
        loss = _slowfast_simclr_pair(q, q2, method.temperature)
        loss.backward()
        total = total + loss.detach()
    return total


@pytest.mark.parametrize("memory", ["standard", "low"])
@pytest.mark.parametrize("rho", RHOS)
def test_simclr_adjacent_slowfast_equals_slowfast_loss(rho, memory):
    batch = make_batch(rho)
    reference = build_method("simclr", head_batch_norm=False, pairs="adjacent", memory=memory)
    slowfast, mean = copy.deepcopy(reference), copy.deepcopy(reference)
    slowfast.loss_reduction = "slowfast"
    expected = _slowfast_simclr(reference, batch["clips"])
    loss, grads = _ours(slowfast, batch)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    _assert_same_grads(grads, _grads(reference))
    mean_loss, mean_grads = _ours(mean, batch)
    assert loss == pytest.approx((rho - 1) * mean_loss, rel=1e-5)
    _assert_same_grads(grads, mean_grads, scale=rho - 1)


# --- ρSwAV --------------------------------------------------------------------------------------


def _slowfast_sinkhorn(q: torch.Tensor, iters: int) -> torch.Tensor:
    """ContrastiveModel.sinkhorn (contrastive.py:825-839), called with Q [B, K]."""
    q = q.t().clone()
    q /= torch.sum(q)
    r = torch.ones(q.shape[0]) / q.shape[0]
    c = torch.ones(q.shape[1]) / q.shape[1]
    for _ in range(iters):
        q *= (r / torch.sum(q, dim=1)).unsqueeze(1)
        q *= (c / torch.sum(q, dim=0)).unsqueeze(0)
    return (q / torch.sum(q, dim=0, keepdim=True)).t().float()


def _slowfast_swav(method: methods.SSLMethod, clips: torch.Tensor) -> torch.Tensor:
    """The swav branch with swav_use_public_code (contrastive.py:584-643; SEQUENTIAL off in
    SwAV_Slow_R50_8x8.yaml, no queue): codes of clips 0 and 1, each predicted by every other
    clip, ``loss = mean over the 2 code clips of (sum over the others / (ρ-1))``."""
    rho, bs = clips.shape[1], clips.shape[0]
    with torch.no_grad():
        method.prototypes.weight.copy_(F.normalize(method.prototypes.weight, dim=1, p=2))
    embedding = [F.normalize(method.head(method.backbone(clips[:, v])), dim=1, p=2) for v in range(rho)]
    output = torch.cat([method.prototypes(x) for x in embedding])
    loss_swav = 0.0
    crops_for_assign = range(2)
    for crop_id in crops_for_assign:
        with torch.no_grad():
            out = output[bs * crop_id : bs * (crop_id + 1)]
            q = torch.exp(out / method.epsilon).t()
            q = _slowfast_sinkhorn(q.t(), 3)[-bs:]
        subloss = 0.0
        for v in [v for v in range(rho) if v != crop_id]:
            p = torch.softmax(output[bs * v : bs * (v + 1)] / method.temperature, dim=1)
            subloss -= torch.mean(torch.sum(q * torch.log(p), dim=1))
        loss_swav += subloss / (rho - 1)
    loss_swav /= len(crops_for_assign)
    loss_swav.backward()
    return loss_swav.detach()


@pytest.mark.parametrize("reduction", ["mean", "slowfast"])
@pytest.mark.parametrize("rho", RHOS)
def test_swav_equals_slowfast_loss_under_both_reductions(rho, reduction):
    batch = make_batch(rho)
    reference = build_method("swav", loss_reduction=reduction)
    reference.on_epoch_start(1)  # prototypes trained (SlowFast drops their grad in epoch 1 only)
    ours = copy.deepcopy(reference)
    expected = _slowfast_swav(reference, batch["clips"])
    loss, grads = _ours(ours, batch)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    _assert_same_grads(grads, _grads(reference))


# --- heads --------------------------------------------------------------------------------------


def _slowfast_mlp(dim_in: int, dim_out: int, mlp_dim: int, num_layers: int, bn_on: bool) -> list:
    """head_helper.MLPHead (head_helper.py:147-187) as a list of layer descriptions."""
    b = not bn_on
    layers = [("Linear", dim_in, mlp_dim, b)]
    for i in range(1, num_layers):
        if bn_on:
            layers.append(("BatchNorm1d", mlp_dim))
        layers.append(("ReLU",))
        d, b = (dim_out, True) if i == num_layers - 1 else (mlp_dim, b)
        layers.append(("Linear", mlp_dim, d, b))
    return layers


def _describe(head: nn.Module) -> list:
    out = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            out.append(("Linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, nn.BatchNorm1d):
            out.append(("BatchNorm1d", layer.num_features))
        else:
            out.append((type(layer).__name__,))
    return out


def _full_scale_methods() -> dict[str, dict]:
    """The method sections of studies/full/clips.yaml (and BYOL's of k400_slow_r50.yaml)."""
    spec = yaml.safe_load((ROOT / "studies/full/clips.yaml").read_text())
    sections = {entry["name"]: dict(entry) for entry in spec["grid"]["method"]}
    base = yaml.safe_load((ROOT / "studies/experiments/k400_slow_r50.yaml").read_text())["method"]
    assert sections["byol"] == base, "clips.yaml's BYOL entry should repeat the base experiment's"
    return sections


# SlowFast configs/contrastive_ssl: (MLP_DIM, NUM_MLP_LAYERS, BN_MLP, DIM); defaults.py:54-60
SLOWFAST_HEADS = {
    "simclr": ("head", (2048, 3, False, 128)),  # SimCLR_SlowR50_8x8.yaml:17-20, BN_MLP unset
    "swav": ("head", (2048, 3, True, 128)),  # SwAV_Slow_R50_8x8.yaml:17-21
    "moco": ("head", (2048, 3, False, 128)),  # MoCo_SlowR50_8x8.yaml:19, MLP_DIM/DIM/BN_MLP unset
    "byol": ("projector", (4096, 2, True, 256)),  # BYOL_SlowR50_8x8.yaml:17-21
}


@pytest.mark.parametrize("name", list(SLOWFAST_HEADS))
def test_full_scale_heads_have_slowfast_layers(name):
    params = {k: v for k, v in _full_scale_methods()[name].items() if k != "name"}
    method = methods.build(name, nn.Identity(), 2048, **params)
    attribute, (mlp_dim, layers, bn_on, dim) = SLOWFAST_HEADS[name]
    assert _describe(getattr(method, attribute)) == _slowfast_mlp(2048, dim, mlp_dim, layers, bn_on)
    if name == "byol":  # PREDICTOR_DEPTHS [2] (BYOL_SlowR50_8x8.yaml:26, head_helper.py:296-310)
        assert _describe(method.predictor) == _slowfast_mlp(dim, dim, mlp_dim, 2, bn_on)
    if name == "swav":  # nn.Linear(DIM, 1000, bias=False) (contrastive.py:98)
        assert method.prototypes.weight.shape == (1000, dim) and method.prototypes.bias is None


def test_full_scale_methods_use_slowfast_reduction_and_queue():
    sections = _full_scale_methods()
    for name in ("simclr", "swav", "moco", "byol"):
        assert sections[name]["loss_reduction"] == "slowfast", name
    assert sections["simclr"]["pairs"] == "adjacent"
    moco = sections["moco"]
    assert moco["queue_per_rank"] is True and moco["exclude_same_video"] is False
    assert moco["queue_size"] == 65536  # defaults.py:33 QUEUE_LEN


# --- learning-rate schedule ---------------------------------------------------------------------


@pytest.fixture
def k400(monkeypatch, tmp_path):
    """Load studies/experiments/k400_slow_r50.yaml (with overrides) as a run would, RHO_DATA set."""
    monkeypatch.setenv("RHO_DATA", str(tmp_path))

    def load(*overrides: str):
        return load_experiment(
            ROOT / "studies/experiments/k400_slow_r50.yaml", list(overrides), check_files=False
        )

    return load


def _slowfast_lr(epoch: float, base_lr: float, warmup_start: float, warmup: float, max_epoch: int) -> float:
    """get_lr_at_epoch with lr_func_cosine, COSINE_AFTER_WARMUP False, COSINE_END_LR 0 (lr_policy.py:9-49)."""

    def cosine(e: float) -> float:
        return 0.0 + (base_lr - 0.0) * (math.cos(math.pi * e / max_epoch) + 1.0) * 0.5

    if epoch < warmup:
        alpha = (cosine(warmup) - warmup_start) / warmup
        return epoch * alpha + warmup_start
    return cosine(epoch)


def test_full_scale_schedule_is_slowfast_lr_policy(k400):
    optim = k400().optim
    assert (optim.schedule, optim.warmup_start_lr, optim.nesterov) == ("cosine_with_warmup", 0.001, True)
    shards, steps_per_epoch = 8, 469  # 8 machines of 64 videos; 240k videos / 512
    schedule = Schedule.of(optim, steps_per_epoch, global_batch=64 * shards)
    # defaults.py:1281-1284 (BASE_LR_SCALE_NUM_SHARDS): BASE_LR and WARMUP_START_LR times NUM_SHARDS
    base_lr, warmup_start = 0.6 * shards, 0.001 * shards
    for step in (0, 1, 100, 5000, 16415, 16416, 16500, 50000, 93799):
        epoch = step / steps_per_epoch  # train_net.py:104 epoch_exact
        expected = _slowfast_lr(epoch, base_lr, warmup_start, 35.0, 200)
        assert schedule.lr(step) == pytest.approx(expected, rel=1e-9), step


def test_ours_restarts_the_cosine_after_warmup_and_slowfast_does_not(k400):
    ours = Schedule.of(k400("optim.schedule=cosine_after_warmup", "optim.warmup_start_lr=0.0").optim, 100, 64)
    slowfast = Schedule.of(k400().optim, 100, 64)
    warmup_end = 3500
    assert ours.lr(warmup_end - 1) == pytest.approx(0.6)  # ours reaches the peak
    assert slowfast.lr(warmup_end) == pytest.approx(0.6 * (math.cos(math.pi * 35 / 200) + 1) / 2)
    total = sum(ours.lr(s) for s in range(20000)) / sum(slowfast.lr(s) for s in range(20000))
    assert 1.15 < total < 1.3  # the "about 22% more total lr"


# --- LARS ---------------------------------------------------------------------------------------


class _SlowFastLARS:
    """SlowFast's LARS (optimizer.py:262-359) around torch SGD (optimizer.py:105-113, 141-142)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool, trust: float):
        self.optim = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, dampening=0.0)
        self.trust, self.eps = trust, 1e-8

    @torch.no_grad()
    def step(self) -> None:
        weight_decays = []
        for group in self.optim.param_groups:
            weight_decay = group["weight_decay"]
            weight_decays.append(weight_decay)
            if not group["apply_LARS"]:
                continue
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is None or p.ndim == 1:
                    continue
                param_norm, grad_norm = torch.norm(p.data), torch.norm(p.grad.data)
                if param_norm != 0 and grad_norm != 0:
                    adaptive_lr = self.trust * param_norm / (grad_norm + param_norm * weight_decay + self.eps)
                    p.grad.data += weight_decay * p.data
                    p.grad.data *= adaptive_lr
        self.optim.step()
        for group, weight_decay in zip(self.optim.param_groups, weight_decays, strict=True):
            group["weight_decay"] = weight_decay


def test_lars_with_nesterov_equals_slowfast_lars():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    theirs = copy.deepcopy(net)
    weight_decay = 1e-2  # large enough that the local-rate formula matters
    config = load_experiment(
        overrides={"optim.name": "lars", "optim.nesterov": True, "optim.weight_decay": weight_decay},
        check_files=False,
    ).optim
    ours_optimizer = build_optimizer(weight_decay_groups(net, weight_decay), config, peak_lr=0.5)
    assert isinstance(ours_optimizer, LARS)
    # optimizer.py:41-77: BN parameters (no decay, no LARS), the rest with LARS (biases skipped as 1-D)
    bn = [p for m in theirs.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters(recurse=False)]
    rest = [p for p in theirs.parameters() if all(p is not b for b in bn)]
    theirs_optimizer = _SlowFastLARS(
        [
            {"params": bn, "weight_decay": 0.0, "apply_LARS": False},
            {"params": rest, "weight_decay": weight_decay, "apply_LARS": True},
        ],
        lr=0.5,
        momentum=0.9,
        nesterov=True,
        trust=0.001,
    )
    x = torch.randn(16, 6)
    for _ in range(4):
        for model, zero_grad, step in (
            (net, ours_optimizer.zero_grad, ours_optimizer.step),
            (theirs, theirs_optimizer.optim.zero_grad, theirs_optimizer.step),
        ):
            zero_grad()
            model(x).pow(2).sum().backward()
            step()
    for (name, p), q in zip(net.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


# --- augmentation -------------------------------------------------------------------------------


def test_full_scale_blur_is_slowfast_mocov2_blur(k400):
    from harness.data import train_transform

    transform = train_transform(224, k400().data.augment)
    # transform.py:1098: RandomApply([GaussianBlur([0.1, 2.0])], p=0.5) under SSL_MOCOV2_AUG
    assert (transform.blur_p, transform.blur_sigma) == (0.5, (0.1, 2.0))
    spec = yaml.safe_load((ROOT / "studies/full/augment.yaml").read_text())
    assert spec["overrides"]["data.augment.blur_p"] == 0.5


# --- ρMoCo's per-rank queue over 2 gloo ranks ---------------------------------------------------


def test_moco_queue_per_rank_is_rank_zeros_queue_each_step(tmp_path):
    """What DDP's broadcast_buffers does to SlowFast's queue_x (contrastive.py:81-84, 255-281, 1096;
    models/build.py:66-76 leaves broadcast_buffers at True): at step 2 every rank's negatives
    are rank 0's queue after step 1, into which each rank then writes its own keys."""
    context = mp.spawn(
        queue_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=False
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("distributed workers did not finish within 120 s")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for rank, result in enumerate(ranks):
        # one process: rank 0's step 1, then this rank's step 2, on one queue
        single = queue_moco()
        single.training_step(queue_batch(0, 0))
        expected_loss = single.training_step(queue_batch(rank, 1)).loss.item()
        assert result["losses"][1] == pytest.approx(expected_loss, rel=1e-6)
        torch.testing.assert_close(result["queue"], single.queue.keys)
    assert not torch.equal(ranks[0]["queue"], ranks[1]["queue"])  # each wrote its own keys last


@pytest.mark.parametrize("hold,expected", [("slowfast", 4), (2, 2), (0, 0)])
def test_moco_no_update_steps_hold_the_weights_as_slowfast(hold, expected):
    """SlowFast's ``contrastive_parameter_surgery``: no optimizer step for the first
    QUEUE_LEN // (BATCH_SIZE · NUM_SHARDS) iterations (here 16 // 4 videos = 4), while the
    forward (and so the queue) runs; the weights move from the first step after."""
    from harness.runtime import Runtime
    from harness.train.loop import EpochContext, train_epoch

    method = build_method("moco", queue_size=16, no_update_steps=hold)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    context = EpochContext(
        method, optimizer, Runtime.for_device("cpu"), Schedule(6, 6, 0, 0.5), log_every=100
    )

    def online():  # the trained weights (BN statistics and the momentum encoder move regardless)
        return {k: v for k, v in method.named_parameters() if not k.startswith("target_")}

    start = {k: v.detach().clone() for k, v in online().items()}
    moved, queues = [], [method.queue.keys.clone()]
    for step in range(6):
        train_epoch(context, [make_batch(2, batch_size=4, seed=step)])
        moved.append(any(not torch.equal(v, start[k]) for k, v in online().items()))
        queues.append(method.queue.keys.clone())
    assert moved == [step >= expected for step in range(6)]
    assert all(not torch.equal(a, b) for a, b in zip(queues, queues[1:], strict=False)), (
        "keys are enqueued while held"
    )
    assert context.step == 6
