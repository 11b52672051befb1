"""The ``linear_slowfast`` protocol: SlowFast's linear evaluation, trained on augmented clips.

What facebookresearch/SlowFast runs for the paper's Kinetics-400 linear numbers
(configs/contrastive_ssl/linear_k400_Slow_8x8_R50_syn0.yaml): one random augmented clip per
training video and epoch goes through the encoder, whose weights are frozen (``DETACH_FINAL_FC``:
the gradient stops before the classifier) but whose BatchNorm is in train mode (``model.train()``
in ``train_epoch``), so its running statistics follow the training clips; a zero-mean
N(0, 0.01²) linear classifier is trained with SGD (lr 0.5 at batch 64, momentum 0.9, no weight
decay) under one cosine over 60 epochs with a linear warmup from 0 over the first 8; testing
averages the softmax over 10 × 3 views with the encoder in eval mode (the updated statistics).

Slower than the cached-feature ``linear`` protocol (every epoch decodes and encodes every
training video), which stays the fast default for CPU studies.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness.eval.context import EvalContext
from harness.eval.finetune import _feature_dim, score_on_views, train_on_clips
from harness.eval.metrics import accuracy
from harness.eval.spec import Benchmark, LinearSlowFastSpec
from harness.optim import lr_at
from harness.runtime import Device, Runtime


class FrozenEncoderProbe(nn.Module):
    """A frozen encoder (no gradient; BatchNorm in train mode while training, if asked) → a linear classifier.

    Args:
        encoder: clips [B, C, T, H, W] → features [B, D]; its parameters are set not to require grad.
        classifier: features [B, D] → logits [B, classes].
        backbone_bn: ``train``: ``train()`` puts the encoder in train mode too, so its BatchNorm
            normalises with batch statistics and updates its running ones (SlowFast); ``eval``:
            the encoder stays in eval mode.
    """

    def __init__(self, encoder: nn.Module, classifier: nn.Linear, backbone_bn: str = "train") -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.classifier = classifier
        self.backbone_bn = backbone_bn

    def train(self, mode: bool = True) -> FrozenEncoderProbe:
        super().train(mode)
        self.encoder.train(mode and self.backbone_bn == "train")
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # = SlowFast's detach before the classifier, without keeping the graph
            features = self.encoder(clips)
        return self.classifier(features.float())


def probe_network(
    encoder: nn.Module, num_classes: int, backbone_bn: str, frames: int, crop: int, device: Device = "cpu"
) -> FrozenEncoderProbe:
    """A copy of ``encoder``, frozen, → a linear classifier (weights N(0, 0.01²), bias 0: SlowFast's
    ``init_weights`` with ``FC_INIT_STD`` 0.01). ``frames`` and ``crop`` give the clip shape used
    once (eval mode) to find the encoder's feature size."""
    runtime = Runtime.for_device(device)
    body = copy.deepcopy(encoder).to(runtime.device)
    classifier = nn.Linear(_feature_dim(body, frames, crop, runtime.device), num_classes)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    return runtime.prepare_model(FrozenEncoderProbe(body, classifier, backbone_bn))


def slowfast_lr(epoch: float, settings: LinearSlowFastSpec) -> float:
    """SlowFast's ``get_lr_at_epoch`` with ``lr_func_cosine`` at a fractional epoch: one cosine from
    ``lr`` to 0 over all epochs (``COSINE_AFTER_WARMUP: False``); before ``warmup_epochs`` a
    line from 0 (``WARMUP_START_LR``) to the cosine's value at the warmup's end."""

    return lr_at(epoch, settings.epochs, settings.warmup_epochs, settings.lr, schedule="cosine_with_warmup")


def fit_linear_on_clips(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> FrozenEncoderProbe:
    """The probe of ``benchmark`` (a ``linear_slowfast`` one) trained on ``encoder``'s outputs for
    augmented training clips; ``encoder`` itself is left untouched (the probe holds a copy)."""
    settings, views = benchmark.settings, benchmark.views
    crop = settings.train_crop or views.crop
    device = context.runtime.device

    def build(classes: int) -> nn.Module:
        return probe_network(encoder, classes, settings.backbone_bn, views.frames, crop, device)

    def schedule(step: int, steps_per_epoch: int) -> float:  # SlowFast: epoch + iter / data_size
        return slowfast_lr(step / steps_per_epoch, settings)

    return train_on_clips(benchmark, context, build, crop, schedule)


def run_linear_slowfast(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> dict[str, float]:
    """SlowFast's linear protocol of ``benchmark`` on ``encoder``: ``{"top1": %, "top5": %}`` of the
    readable test videos, the softmax averaged over their views."""
    probe = fit_linear_on_clips(encoder, benchmark, context)
    return accuracy(*score_on_views(probe, benchmark, context))
