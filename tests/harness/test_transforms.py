"""The clip transforms: the hue step is a chroma rotation in torchvision's direction; the training
transform is bit-identical to its torchvision v2 pipeline and really greys clips."""

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from harness.config import AugmentConfig
from harness.data.transforms import ColorJitter, reference_train_transform, rotate_hue, train_transform

LUMA = torch.tensor([0.299, 0.587, 0.114])


def test_rotate_hue_keeps_greys_and_luma_and_turns_like_torchvision():
    torch.manual_seed(0)
    colours = torch.rand(2, 3, 16, 16) * 0.5 + 0.25  # away from 0 and 1: no clamping for small turns
    assert torch.allclose(rotate_hue(colours, 0.0), colours, atol=1e-6)
    grey = torch.full((1, 3, 4, 4), 0.4)
    assert torch.allclose(rotate_hue(grey, 0.23), grey, atol=1e-6)
    turned = rotate_hue(colours, 0.08)
    luma = torch.einsum("c,...chw->...hw", LUMA, colours)
    assert torch.allclose(torch.einsum("c,...chw->...hw", LUMA, turned), luma, atol=1e-5)
    reference = F.adjust_hue(colours, 0.08)
    assert (turned - reference).abs().mean() < 0.5 * (rotate_hue(colours, -0.08) - reference).abs().mean()
    red = torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1)
    towards_yellow = rotate_hue(red, 1 / 12).flatten()
    assert towards_yellow[1] > 0.3 and towards_yellow[2] < 0.2  # green rises, blue does not


def test_color_jitter_with_hue_only_applies_one_rotation_of_the_drawn_factor():
    jitter = ColorJitter(hue=0.15)
    clip = torch.rand(4, 3, 8, 8)
    torch.manual_seed(3)
    params = jitter.make_params([clip])
    torch.manual_seed(3)
    out = jitter(clip)
    assert -0.15 <= params["hue_factor"] <= 0.15 and params["hue_factor"] != 0
    assert torch.allclose(out, rotate_hue(clip, params["hue_factor"]), atol=1e-6)


@pytest.mark.parametrize(
    "augment",
    [
        AugmentConfig(),  # the paper's: crops, flip, jitter, grayscale
        AugmentConfig(crop_scale=[0.6, 1.0], grayscale_p=0.5, blur_p=0.5),
        AugmentConfig(color_p=0.0, grayscale_p=0.0, flip=1.0),
        AugmentConfig(aspect=[3.0, 4.0], crop_scale=[0.9, 1.0]),  # no box fits: v2's centre-crop fallback
    ],
    ids=["paper", "blur-grey", "geometry-only", "fallback"],
)
def test_the_training_transform_is_bit_identical_to_its_v2_pipeline(augment):
    fast, reference = train_transform(32, augment), reference_train_transform(32, augment)
    generator = torch.Generator().manual_seed(1)
    for seed in range(60):
        clip = torch.randint(0, 256, (4, 64, 48, 3), dtype=torch.uint8, generator=generator)
        torch.manual_seed(seed)
        expected = reference(clip)
        torch.manual_seed(seed)
        out = fast(clip)
        assert out.shape == (3, 4, 32, 32)
        assert torch.equal(out, expected), f"seed {seed}"


def test_grayscale_greys_video_clips():
    """torchvision's v2.RandomGrayscale passes videos through unchanged; ours must not."""
    clip = torch.randint(
        0, 256, (4, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    always = AugmentConfig(color_p=0.0, grayscale_p=1.0)
    never = AugmentConfig(color_p=0.0, grayscale_p=0.0)
    for transform in (train_transform(32, always), reference_train_transform(32, always)):
        grey = transform(clip)
        assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    coloured = train_transform(32, never)(clip)
    assert (coloured[0] - coloured[1]).abs().max() > 1.0
