"""V-JEPA: multi-block masks, the L1 loss on LayerNorm-ed target features, context encoder on visible
tokens only, the EMA target on all, cross-clip targets, the backbone check, and a real pretraining run."""

from __future__ import annotations

import pytest
import torch
from method_helpers import assert_step_trains
from tiny_data import tiny_experiment_tree

import methods
from harness import backbones
from harness.config import build_experiment
from harness.train import pretrain
from methods.vjepa import block_size, feature_loss, multiblock_mask


def jepa(seed: int = 0, **params) -> methods.SSLMethod:
    """V-JEPA around vit_tiny (8x8 patches: a 2x4x4 grid on 4x32x32 clips), a one-block predictor."""
    torch.manual_seed(seed)
    backbone, feature_dim = backbones.build("vit_tiny")
    return methods.build("vjepa", backbone, feature_dim, **{"pred_dim": 32, "pred_depth": 1, **params})


def clips_batch(videos: int, views: int, seed: int = 1) -> dict:
    return {"clips": torch.randn(videos, views, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))}


def test_block_size_follows_scale_and_aspect_ratio():
    assert block_size((1, 14, 14), 0.15, (1.0, 1.0), None) == (5, 5)  # int(196 * 0.15) = 29 -> 5.39
    assert block_size((1, 14, 14), 0.7, (2.0, 2.0), None) == (
        min(14, round((137 * 2) ** 0.5)),
        round((137 / 2) ** 0.5),
    )
    assert block_size((1, 2, 2), 0.01, (1.0, 1.0), None) == (1, 1), "at least one token a side"


def test_multiblock_masks_hide_blocks_repeated_over_time():
    generator = torch.Generator().manual_seed(0)
    keep, hidden = multiblock_mask(1, (3, 6, 6), 1, 0.25, (1.0, 1.0), generator=generator)  # one 3x3 block
    assert sorted(keep[0].tolist() + hidden[0].tolist()) == list(range(108))
    slices = [{i % 36 for i in hidden[0].tolist() if i // 36 == t} for t in range(3)]
    assert slices[0] == slices[1] == slices[2] and len(slices[0]) == 9
    rows, cols = {i // 6 for i in slices[0]}, {i % 6 for i in slices[0]}
    assert len(rows) == len(cols) == 3 and max(rows) - min(rows) == 2 and max(cols) - min(cols) == 2
    keep, hidden = multiblock_mask(5, (2, 6, 6), 3, 0.15, generator=generator)
    assert keep.shape[0] == hidden.shape[0] == 5 and keep.shape[1] + hidden.shape[1] <= 72
    for visible, masked in zip(keep, hidden, strict=True):
        assert not set(visible.tolist()) & set(masked.tolist())
        assert torch.equal(visible, visible.sort().values) and torch.equal(masked, masked.sort().values)
    with pytest.raises(ValueError, match="hide all 2x2 positions"):
        multiblock_mask(1, (1, 2, 2), 1, 1.0)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / ((x - mean).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def test_loss_is_the_l1_to_the_layer_normed_target_features_of_the_hidden_tokens():
    method = jepa(mask_blocks=[2, 1], mask_scales=[0.15, 0.5])
    batch = clips_batch(2, 1)
    predictions, contexts = [], []
    method.predictor.head.register_forward_hook(lambda m, i, out: predictions.append(out))
    method.backbone.blocks[0].register_forward_pre_hook(lambda m, args: contexts.append(args[0].shape[1]))
    torch.manual_seed(5)
    out = method.training_step(batch)
    torch.manual_seed(5)
    masks = [multiblock_mask(2, (2, 4, 4), n, s) for n, s in ((2, 0.15), (1, 0.5))]
    with torch.no_grad():
        targets = layer_norm(method.target_backbone.forward_tokens(batch["clips"][:, 0]))
    expected = []
    for (_, hidden), prediction in zip(masks, predictions, strict=True):
        assert prediction.shape == (2, hidden.shape[1], 96)
        expected.append(
            torch.stack([(prediction[b] - targets[b, hidden[b]]).abs().mean() for b in range(2)]).mean()
        )
        torch.testing.assert_close(
            feature_loss(prediction, targets, hidden), expected[-1], rtol=1e-5, atol=1e-6
        )
    torch.testing.assert_close(out.loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)
    assert contexts == [keep.shape[1] for keep, _ in masks], (
        "the context encoder sees the visible tokens only"
    )
    assert all(n < 32 for n in contexts)


def test_the_target_sees_every_token_and_moves_only_by_ema():
    method = jepa()
    seen = []
    method.target_backbone.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    out = assert_step_trains(method, clips_batch(2, 2))
    assert seen == [32] and out.metrics["momentum"] == 0.998
    assert all(p.grad is None and not p.requires_grad for p in method.target_backbone.parameters())
    assert method.predictor.mask_token.grad is not None
    assert method.encoder is method.target_backbone  # V-JEPA evaluates its target encoder


def test_fine_tuning_trains_a_copy_of_the_target_encoder():
    from harness.eval import classifier_network

    method = jepa()
    network = classifier_network(method.encoder, num_classes=3, dropout=0.0, frames=4, crop=32)
    assert all(p.requires_grad for p in network.parameters())
    assert not any(p.requires_grad for p in method.target_backbone.parameters())  # the original stays frozen


def test_cross_clip_targets_come_from_the_next_clip_of_the_video():
    method = jepa(cross_clip=True)
    clips = clips_batch(2, 3)["clips"]
    with torch.no_grad():
        own = layer_norm(method.target_backbone.forward_tokens(clips.flatten(0, 1))).unflatten(0, (2, 3))
        crossed = method.targets(clips)
    for v in range(3):
        torch.testing.assert_close(crossed[:, v], own[:, (v + 1) % 3], rtol=1e-5, atol=1e-5)
    assert_step_trains(method, {"clips": clips})
    with pytest.raises(ValueError, match="cross_clip needs ρ >= 2"):
        method.training_step(clips_batch(2, 1))
    jepa().training_step(clips_batch(2, 1))  # without cross_clip, ρ = 1 works


def test_defaults_and_refusals():
    params = methods.params_of("vjepa")
    assert params["mask_blocks"] == (8, 2) and params["mask_scales"] == (0.15, 0.7)
    assert params["momentum"] == 0.998 and params["pred_depth"] == 12 and params["cross_clip"] is False
    with torch.device("meta"):
        backbone, dim = backbones.build("vit_l")
        method = methods.build("vjepa", backbone, dim)
    assert method.predictor.width == 384 and method.predictor.head.out_features == 1024
    assert methods.get("vjepa").min_clips == 1
    backbone, dim = backbones.build("r3d_tiny", width=4)
    with pytest.raises(ValueError, match=r"vjepa needs a backbone that gives tokens.*vit_tiny, vit_s"):
        methods.build("vjepa", backbone, dim)
    with pytest.raises(ValueError, match="one scale per mask"):
        jepa(mask_blocks=[8, 2], mask_scales=[0.15])


def test_pretrain_end_to_end_with_cross_clip_targets(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"].update({"clips": 2, "frames": 4, "crop": 32})
    tree["backbone"] = {"name": "vit_tiny"}
    tree["method"] = {"name": "vjepa", "pred_dim": 32, "pred_depth": 1, "cross_clip": True}
    tree["optim"].update({"name": "adamw", "lr": 0.001, "epochs": 2})
    result = pretrain(
        build_experiment(tree), output=tmp_path / "run", tracking_uri=mlflow_uri, print_progress=False
    )
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.cost["cost.clips_seen"] == 2 * 12 * 2


def test_cross_clip_at_rho_1_is_refused_before_any_compute(tiny_synth, tmp_path):
    from harness.config import ConfigError
    from harness.train.factories import build_method

    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"].update({"clips": 1, "frames": 4, "crop": 32})
    tree["backbone"] = {"name": "vit_tiny"}
    tree["method"] = {"name": "vjepa", "pred_dim": 32, "pred_depth": 1, "cross_clip": True}
    with pytest.raises(ConfigError, match=r"data.clips = 1 is not allowed: at least 2: method vjepa"):
        build_method(build_experiment(tree))
    tree["method"]["cross_clip"] = False
    assert build_method(build_experiment(tree)).clips_needed == 1
