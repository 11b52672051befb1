"""The clip transforms' colour jitter: the hue step is a chroma rotation that matches torchvision's direction."""

import torch
from torchvision.transforms.v2 import functional as F

from harness.data.transforms import ColorJitter, rotate_hue

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
