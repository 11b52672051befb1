"""Random initialisation: the untrained backbone, the lower bound of every comparison."""

from __future__ import annotations

from torch import Tensor

from methods.base import SSLMethod, StepOutput


class RandomInit(SSLMethod):
    """Nothing to train (``trainable = False``): the engine skips pre-training and evaluates the backbone as built."""

    trainable = False

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        """Always raises: a random-init run has no training step."""
        raise RuntimeError("method 'random' is not trained: skip pre-training when method.trainable is False")
