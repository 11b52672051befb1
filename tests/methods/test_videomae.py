"""VideoMAE: tube masking, the normalised-pixel targets and loss, the encoder on visible tokens only,
ρ clips as samples of their own (ρ = 1 included), the backbone check, and a real pretraining run."""

from __future__ import annotations

import time

import pytest
import torch
from method_helpers import assert_step_trains, build_method
from tiny_data import tiny_experiment_tree, write_tiny_knn_benchmark

import methods
from harness import backbones
from harness.config import ConfigError, build_experiment
from harness.train import pretrain
from methods.videomae import patch_targets, reconstruction_loss, tube_mask


def mae(seed: int = 0, **params) -> methods.SSLMethod:
    """VideoMAE around vit_tiny (8x8 patches, 2-frame tubelets) with a small decoder."""
    torch.manual_seed(seed)
    backbone, feature_dim = backbones.build("vit_tiny")
    return methods.build(
        "videomae", backbone, feature_dim, **{"decoder_dim": 32, "decoder_depth": 2, **params}
    )


def clips_batch(videos: int, views: int, frames: int = 4, size: int = 32, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"clips": torch.randn(videos, views, 3, frames, size, size, generator=generator)}


def test_tube_mask_hides_the_same_positions_in_every_time_slice_and_differs_across_clips():
    grid = (3, 4, 5)  # 20 positions per slice: int(0.9 * 20) = 18 hidden, 2 visible
    keep, masked = tube_mask(6, grid, 0.9, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (6, 3 * 2) and masked.shape == (6, 3 * 18)
    for visible, hidden in zip(keep, masked, strict=True):
        assert sorted(visible.tolist() + hidden.tolist()) == list(range(60))
        slices = [{i % 20 for i in hidden.tolist() if i // 20 == t} for t in range(3)]
        assert slices[0] == slices[1] == slices[2] and len(slices[0]) == 18
        assert torch.equal(visible, visible.sort().values)
    spatial = {tuple(sorted(i % 20 for i in visible.tolist())) for visible in keep}
    assert len(spatial) > 1, "every clip got the same mask"
    # VideoMAE's count: int(ratio * positions per slice)
    assert tube_mask(2, (2, 4, 4), 0.75)[1].shape == (2, 2 * 12)
    assert tube_mask(2, (1, 3, 3), 0.0)[0].shape == (2, 9)
    assert tube_mask(1, (1, 2, 2), 0.99)[0].shape == (1, 1), "one position of each slice stays visible"
    with pytest.raises(ValueError, match=r"mask_ratio=1.0: must be in \[0, 1\)"):
        tube_mask(1, (1, 2, 2), 1.0)


def reference_targets(clips: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Normalised tubelet pixels, token by token with plain slicing (an independent patchify)."""
    n, c, frames, height, width = clips.shape
    rows = []
    for sample in range(n):
        tokens = []
        for t in range(frames // tubelet):
            for h in range(height // patch):
                for w in range(width // patch):
                    cube = clips[
                        sample,
                        :,
                        t * tubelet : (t + 1) * tubelet,
                        h * patch : (h + 1) * patch,
                        w * patch : (w + 1) * patch,
                    ]
                    pixels = cube.reshape(c, -1).T  # [tubelet*patch*patch, C], (frame, row, column) order
                    mean = pixels.mean(dim=0)
                    std = ((pixels - mean) ** 2).sum(dim=0).div(pixels.shape[0] - 1).sqrt()
                    tokens.append(((pixels - mean) / (std + 1e-6)).reshape(-1))
        rows.append(torch.stack(tokens))
    return torch.stack(rows)


def test_targets_are_per_patch_normalised_pixels():
    clips = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 + 1
    torch.testing.assert_close(patch_targets(clips, 2, 8), reference_targets(clips, 2, 8))
    raw = patch_targets(clips, 2, 8, normalize=False)
    assert raw.shape == (2, 8, 2 * 8 * 8 * 3)
    assert raw[1, 3, :3].tolist() == clips[1, :, 0, 8, 8].tolist()  # token 3 = (t 0, h 1, w 1), first pixel


def test_loss_is_the_mse_over_the_masked_patches_normalised_targets():
    method = mae(mask_ratio=0.75)
    batch = clips_batch(2, 1, size=16)
    predictions = []
    method.decoder.head.register_forward_hook(lambda m, i, out: predictions.append(out))
    torch.manual_seed(7)
    out = method.training_step(batch)
    torch.manual_seed(7)
    _, masked = tube_mask(2, (2, 2, 2), 0.75)  # the draw training_step made
    targets = reference_targets(batch["clips"][:, 0], 2, 8)
    (prediction,) = predictions
    assert prediction.shape == (2, 2 * 3, 2 * 8 * 8 * 3)
    expected = torch.stack([((prediction[b] - targets[b, masked[b]]) ** 2).mean() for b in range(2)]).mean()
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["loss"] == pytest.approx(out.loss.item()) and out.metrics["visible_tokens"] == 2
    # the same loss through the documented pure function
    torch.testing.assert_close(reconstruction_loss(prediction, targets, masked), expected)
    # a prediction that equals the targets has zero loss
    assert reconstruction_loss(targets[:, :3], targets, torch.arange(3).expand(2, -1)).item() == 0.0


def test_the_encoder_runs_on_the_visible_tokens_only():
    method = mae()
    seen = []
    method.backbone.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    method.training_step(clips_batch(2, 2))  # 4x32x32: grid 2x4x4, int(0.9 * 16) = 14 hidden per slice
    assert seen == [2 * 2]
    decoder_seen = []
    method.decoder.blocks[0].register_forward_pre_hook(lambda m, args: decoder_seen.append(args[0].shape[1]))
    method.training_step(clips_batch(2, 2))
    assert decoder_seen == [32]
    # evaluation: the backbone's pooled features over all 32 tokens, unmasked
    seen.clear()
    with torch.no_grad():
        features = method.encoder(clips_batch(3, 1)["clips"][:, 0])
    assert features.shape == (3, 96) and seen == [32]


@pytest.mark.parametrize("views", [1, 2, 3])
def test_every_clip_is_a_sample_of_its_own_and_gradients_reach_the_encoder(views):
    method = mae()
    batch = clips_batch(2, views)
    torch.manual_seed(11)
    grouped = method.training_step(batch).loss
    torch.manual_seed(11)
    flat = method.training_step({"clips": batch["clips"].flatten(0, 1)[:, None]}).loss
    torch.testing.assert_close(grouped, flat)
    assert methods.get("videomae").min_clips == 1 and methods.get("simclr").min_clips == 2
    assert_step_trains(method, batch)
    assert method.decoder.mask_token.grad is not None and method.decoder.mask_token.grad.abs().sum() > 0


def test_defaults_follow_videomae():
    params = methods.params_of("videomae")
    assert params["mask_ratio"] == 0.9 and params["decoder_depth"] == 4 and params["norm_targets"] is True
    for name, dim, heads in (("vit_s", 192, 3), ("vit_b", 384, 6), ("vit_l", 512, 8)):
        with torch.device("meta"):
            backbone, feature_dim = backbones.build(name)
            method = methods.build("videomae", backbone, feature_dim)
        assert method.decoder.width == dim and method.decoder.blocks[0].attn.num_heads == heads
        assert method.decoder.head.out_features == 2 * 16 * 16 * 3 and len(method.decoder.blocks) == 4
    method = build_method("videomae")
    no_decay = {
        id(p) for group in method.param_groups(0.05) if group["weight_decay"] == 0 for p in group["params"]
    }
    assert id(method.decoder.mask_token) in no_decay, "VideoMAE does not decay its mask token"


def test_a_backbone_without_tokens_is_refused_by_name():
    backbone, feature_dim = backbones.build("r3d_tiny", width=4)
    with pytest.raises(
        ValueError, match=r"TinyResNet3d gives only pooled features.*vit_tiny, vit_s, vit_b, vit_l"
    ):
        methods.build("videomae", backbone, feature_dim)
    with pytest.raises(ValueError, match="mask_ratio=1.0"):
        mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_dim=12"):
        mae(decoder_dim=12)


def test_pretrain_end_to_end_at_rho_1_with_vit_tiny(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"].update({"clips": 1, "frames": 4, "crop": 16})
    tree["backbone"] = {"name": "vit_tiny", "image_size": 16}
    tree["method"] = {"name": "videomae", "mask_ratio": 0.75, "decoder_dim": 32, "decoder_depth": 1}
    tree["optim"].update({"name": "adamw", "lr": 0.001, "epochs": 2})
    tree["eval"] = {"benchmarks": [str(write_tiny_knn_benchmark(tiny_synth, tmp_path))]}
    started = time.perf_counter()
    result = pretrain(
        build_experiment(tree), output=tmp_path / "run", tracking_uri=mlflow_uri, print_progress=False
    )
    elapsed = time.perf_counter() - started
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.cost["cost.clips_seen"] == 2 * 12, (
        "ρ = 1: one clip per video and step (12 videos, 2 epochs)"
    )
    assert any("tiny-knn" in key for key in result.metrics), result.metrics
    assert elapsed < 60, f"{elapsed:.1f} s"


def test_pretrain_refuses_a_backbone_without_tokens_before_training(tiny_synth, tmp_path, mlflow_uri):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["method"] = {"name": "videomae"}
    with pytest.raises(ConfigError, match="backbone.name = 'r3d_tiny' .*gives tokens.*vit_tiny"):
        pretrain(
            build_experiment(tree), output=tmp_path / "run", tracking_uri=mlflow_uri, print_progress=False
        )
