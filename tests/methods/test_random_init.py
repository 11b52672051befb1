"""Random init: nothing to train, the backbone as built is the encoder."""

from __future__ import annotations

import pytest
from method_helpers import build_method, make_batch


def test_random_is_not_trainable_and_refuses_to_train():
    method = build_method("random")
    assert method.trainable is False and method.uses_labels is False
    assert method.encoder is method.backbone
    with pytest.raises(RuntimeError, match="not trained"):
        method.training_step(make_batch(2))
