"""Supervised upper bound: cross-entropy over every clip of every video."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_helpers import assert_step_trains, build_method, make_batch

import methods


@pytest.mark.parametrize("rho", [1, 2, 3])
def test_step_trains(rho):
    method = build_method("supervised")
    assert method.uses_labels and method.trainable
    out = assert_step_trains(method, make_batch(rho))
    assert set(out.metrics) == {"loss", "accuracy"}


def test_loss_is_cross_entropy_over_every_clip():
    method = build_method("supervised")
    batch = make_batch(3)
    loss = method.training_step(batch).loss
    expected = torch.stack(
        [
            F.cross_entropy(method.classifier(method.backbone(batch["clips"][:, clip])), batch["label"])
            for clip in range(3)
        ]
    ).mean()
    torch.testing.assert_close(loss, expected)


def test_needs_num_classes():
    backbone = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="num_classes"):
        methods.build("supervised", backbone, 2)
    assert methods.build("supervised", backbone, 2, num_classes=7).classifier.out_features == 7
