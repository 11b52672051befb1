"""The video ViT (harness.vit): token grid and shapes, the token API, position embeddings, the registry."""

from __future__ import annotations

import math

import pytest
import torch

from harness import backbones
from harness.config import build_experiment, config_keys
from harness.vit import TOKEN_BACKBONES, VideoViT, gives_tokens, patchify, sincos_pos_embed


def tiny(**kwargs) -> VideoViT:
    torch.manual_seed(0)
    return VideoViT(32, 2, 2, frames=4, image_size=16, patch_size=8, **kwargs).eval()


@pytest.mark.parametrize(
    ("shape", "grid"), [((2, 8, 8), (1, 1, 1)), ((4, 16, 16), (2, 2, 2)), ((6, 16, 24), (3, 2, 3))]
)
def test_token_count_and_feature_shapes_follow_the_clip_size(shape, grid):
    model = tiny()
    clips = torch.randn(3, 3, *shape)
    assert model.token_grid(clips.shape) == grid
    assert model.num_tokens(clips.shape) == (shape[0] // 2) * (shape[1] // 8) * (shape[2] // 8)
    with torch.no_grad():
        assert model.forward_tokens(clips).shape == (3, math.prod(grid), 32)
        assert model(clips).shape == (3, 32)


def test_clips_that_do_not_divide_into_tubelets_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="3x16x16 .*do not divide into 2x8x8 tubelets"):
        model(torch.randn(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="patch_size 8"):
        model.token_grid((4, 16, 12))


def test_pooled_features_are_the_mean_of_the_final_tokens():
    model = tiny()
    clips = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), model.forward_tokens(clips).mean(dim=1))
        # the final LayerNorm (without its affine part at init): each token has mean 0, variance 1
        tokens = model.forward_tokens(clips)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)


def test_keep_all_tokens_is_the_plain_forward_and_a_subset_runs_only_those():
    model = tiny()
    clips = torch.randn(2, 3, 4, 16, 16)
    everything = torch.arange(8).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(clips, everything), model.forward_tokens(clips))
        # a permutation of all tokens permutes the outputs (attention is permutation-equivariant:
        # each token carries its position embedding with it)
        order = torch.stack([torch.randperm(8), torch.randperm(8)])
        permuted = model.forward_tokens(clips, order)
        full = model.forward_tokens(clips)
        torch.testing.assert_close(permuted, torch.gather(full, 1, order[..., None].expand(-1, -1, 32)))
        # visible tokens see nothing of the others: changing every pixel outside token 5's tubelet
        # (t=1, h=0, w=1 of the 2x2x2 grid) leaves its output as it was
        single = model.forward_tokens(clips, torch.tensor([[5], [5]]))
        changed = torch.randn_like(clips)
        changed[:, :, 2:4, 0:8, 8:16] = clips[:, :, 2:4, 0:8, 8:16]
        torch.testing.assert_close(model.forward_tokens(changed, torch.tensor([[5], [5]])), single)
        assert not torch.allclose(model.forward_tokens(changed)[:, 5], model.forward_tokens(clips)[:, 5])
    assert single.shape == (2, 1, 32)
    lengths = []
    handle = model.blocks[0].register_forward_hook(lambda m, i, o: lengths.append(i[0].shape[1]))
    with torch.no_grad():
        model.forward_tokens(clips, torch.tensor([[0, 3, 7], [1, 2, 4]]))
    handle.remove()
    assert lengths == [3]


def test_sincos_position_embeddings_have_the_3d_sincos_values():
    dim, grid = 16, (2, 3, 4)
    table = sincos_pos_embed(dim, grid)
    assert table.shape == (24, 16)
    # token (t=1, h=2, w=3) is index 1*12 + 2*4 + 3 = 23: time 8 dims, rows 4, columns 4
    t, h, w = 1.0, 2.0, 3.0
    omega_t = [1 / 10000 ** (k / 4) for k in range(4)]
    omega_hw = [1 / 10000 ** (k / 2) for k in range(2)]
    expected = (
        [math.sin(t * o) for o in omega_t]
        + [math.cos(t * o) for o in omega_t]
        + [math.sin(h * o) for o in omega_hw]
        + [math.cos(h * o) for o in omega_hw]
        + [math.sin(w * o) for o in omega_hw]
        + [math.cos(w * o) for o in omega_hw]
    )
    torch.testing.assert_close(table[23], torch.tensor(expected))
    assert torch.equal(
        table[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 2 + [1.0] * 2 + [0.0] * 2 + [1.0] * 2)
    )
    with pytest.raises(ValueError, match="divisible by 8"):
        sincos_pos_embed(12, grid)


def test_the_model_adds_the_grids_sincos_embeddings():
    model = tiny()
    assert not any("pos" in name for name, _ in model.named_parameters()), "sin-cos embeddings are fixed"
    clips = torch.randn(1, 3, 6, 16, 24)
    expected = model.patch_embed(clips).flatten(2).transpose(1, 2) + sincos_pos_embed(32, (3, 2, 3))
    captured = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        model(clips)
    handle.remove()
    torch.testing.assert_close(captured[0], expected)


def test_learned_position_embeddings_are_sized_by_frames_and_image_size_and_interpolated():
    model = tiny(pos_embed="learned")
    assert model.pos_embed.shape == (1, 2 * 2 * 2, 32)
    assert model.position_embeddings((2, 2, 2)) is model.pos_embed
    with torch.no_grad():
        model.pos_embed.copy_(torch.arange(8.0).reshape(1, 8, 1).expand(1, 8, 32))
    assert model.position_embeddings((4, 4, 4)).shape == (1, 64, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 32)
    # a grid twice the size in each direction: the corners keep the corner values
    table = model.position_embeddings((4, 4, 4))[0, :, 0]
    assert table[0] == 0.0 and table[-1] == 7.0
    model(torch.randn(1, 3, 4, 16, 16)).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pos_embed='rope'"):
        VideoViT(32, 1, 2, pos_embed="rope")


def test_patchify_orders_tokens_t_h_w_and_pixels_frame_row_column_channel():
    clips = torch.arange(2 * 3 * 4 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 4, 6)
    patches = patchify(clips, tubelet_size=2, patch_size=2)  # grid (2, 2, 3)
    assert patches.shape == (2, 12, 8, 3)
    b, token, pixel, channel = 1, 7, 5, 2  # token 7: t=1, h=0, w=... 7 = 1*6 + 0*3 + 1 -> (1, 0, 1)
    p0, p1, p2 = 1, 0, 1  # pixel 5 = 1*4 + 0*2 + 1
    assert patches[b, token, pixel, channel] == clips[b, channel, 2 * 1 + p0, 2 * 0 + p1, 2 * 1 + p2]


def test_registry_sizes_and_their_config_keys():
    for name, dim, depth, heads in (("vit_s", 384, 12, 6), ("vit_b", 768, 12, 12), ("vit_l", 1024, 24, 16)):
        with torch.device("meta"):  # the sizes without allocating ViT-L
            model, feature_dim = backbones.build(name)
        assert feature_dim == model.embed_dim == dim and len(model.blocks) == depth
        assert model.blocks[0].attn.num_heads == heads and model.patch_size == 16 and model.tubelet_size == 2
    model, feature_dim = backbones.build("vit_tiny")
    assert (feature_dim, len(model.blocks), model.patch_size, model.tubelet_size) == (96, 4, 8, 2)
    assert model.token_grid((4, 32, 32)) == (2, 4, 4)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert set(TOKEN_BACKBONES) == {n for n in backbones.available() if n.startswith("vit_")}
    assert gives_tokens(model) and not gives_tokens(backbones.build("r3d_tiny", width=4)[0])
    assert (
        backbones.params_of("vit_tiny")["patch_size"] == 8
        and backbones.params_of("vit_s")["patch_size"] == 16
    )
    assert not {"embed_dim", "depth", "num_heads"} & set(backbones.params_of("vit_b")), (
        "the size is the name's"
    )
    listed = backbones.params_of("vit_tiny")  # the defaults it lists are the ones it builds with
    learned, _ = backbones.build("vit_tiny", pos_embed="learned")
    assert learned.learned_grid == (
        listed["frames"] // listed["tubelet_size"],
        listed["image_size"] // listed["patch_size"],
        listed["image_size"] // listed["patch_size"],
    )
    assert learned.patch_size == listed["patch_size"]
    keys = {info.key: info for info in config_keys("backbone.vit_tiny")}
    assert keys["backbone.pos_embed"].default == "sincos" and keys["backbone.pos_embed"].help
    experiment = build_experiment(
        {"backbone": {"name": "vit_tiny", "pos_embed": "learned", "image_size": 16}}, check_files=False
    )
    model, _ = backbones.build(experiment.backbone.name, **experiment.backbone.params)
    assert model.pos_embed.shape == (1, 2 * 2 * 2, 96)


def test_vit_tiny_trains():
    torch.manual_seed(0)
    model, feature_dim = backbones.build("vit_tiny")
    clips = torch.randn(8, 3, 4, 32, 32)
    target = torch.randn(8, feature_dim)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = (model(clips) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.grad is not None for p in model.parameters())
