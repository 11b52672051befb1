"""The linear protocol: a softmax classifier on frozen, cached, standardised features.

The training features (every training view is one sample) are standardised with their own
per-dimension mean and std — a BatchNorm without affine before the classifier, as in the
MAE / MoCo v3 linear probes, which makes one lr fit features of any scale — then an
``nn.Linear`` is trained with SGD momentum, linear warmup and a half-cosine lr; a test video's
softmax probabilities are averaged over its K temporal × S spatial views.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harness.eval.context import EvalContext
from harness.eval.features import cached_features
from harness.eval.metrics import accuracy, class_count, view_probabilities
from harness.eval.spec import AttentiveSpec, Benchmark, LinearSpec
from harness.optim import lr_at, set_lr
from harness.runtime import Device


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-5) -> list[torch.Tensor]:
    """Subtract the per-dimension mean of ``train`` [M, D] and divide by sqrt(var + eps), from all tensors."""
    mean, var = train.mean(dim=0), train.var(dim=0, unbiased=False)
    scale = (var + eps).rsqrt()
    return [(x - mean) * scale for x in (train, *others)]


def new_probe(
    feature_dim: int, num_classes: int, settings: LinearSpec, device: torch.device | str = "cpu"
) -> tuple[nn.Linear, torch.optim.SGD]:
    """A zero-initialised softmax classifier on ``device`` and its SGD (``settings``' lr, momentum, weight decay)."""
    classifier = nn.Linear(feature_dim, num_classes).to(device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(
        classifier.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    return classifier, optimizer


def probe_step(
    classifier: nn.Linear, optimizer: torch.optim.Optimizer, features: torch.Tensor, labels: torch.Tensor
) -> None:
    """One SGD step of the cross-entropy of ``classifier`` on a minibatch ``features`` [N, D], ``labels`` [N]."""
    loss = F.cross_entropy(classifier(features), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: LinearSpec, seed: int = 0
) -> nn.Linear:
    """A softmax classifier on ``features`` [M, D] (on their device), zero-initialised.

    Minibatch SGD with momentum and weight decay; lr warms up linearly over
    ``settings.warmup_epochs`` then follows a half-cosine to 0 over ``settings.epochs``. The
    shuffling comes from a generator seeded with ``seed``.
    """
    classifier, optimizer = new_probe(features.shape[1], num_classes, settings, features.device)
    for lr, batch in minibatch_schedule(len(features), settings, seed, features.device):
        set_lr(optimizer, lr)
        probe_step(classifier, optimizer, features[batch], labels[batch])
    return classifier


def minibatch_schedule(
    samples: int, settings: LinearSpec | AttentiveSpec, seed: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[float, torch.Tensor]]:
    """(lr, sample indices) of every step of a probe's training: ``settings.epochs`` shuffled passes
    over ``samples`` in minibatches of ``settings.batch_size`` (a generator seeded with ``seed``),
    the lr warming up linearly over ``settings.warmup_epochs`` then a half-cosine to 0."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(samples / settings.batch_size)
    total, warmup = settings.epochs * steps_per_epoch, round(settings.warmup_epochs * steps_per_epoch)
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(samples, generator=generator).to(device)
        for batch in order.split(settings.batch_size):
            yield lr_at(step, total, warmup, settings.lr), batch
            step += 1


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    settings: LinearSpec,
    seed: int = 0,
    device: Device = "cpu",
) -> dict[str, float]:
    """Linear classification of frozen features with test-view averaging.

    Args:
        train_features: [N, V, D]; each of the V views is a training sample of its video's label.
        train_labels: [N].
        test_features: [M, V', D]; a video's softmax probabilities are averaged over its V' views.
        test_labels: [M].

    Returns:
        ``{"top1": %, "top5": %}`` on the test videos.
    """
    device = torch.device(device)
    views = train_features.shape[1]
    train, test = standardize(train_features.flatten(0, 1).to(device), test_features.to(device))
    targets = train_labels.repeat_interleave(views).to(device)
    classifier = fit_linear(train, targets, class_count(train_labels, test_labels), settings, seed)
    with torch.no_grad():
        probabilities = view_probabilities(classifier(test))
    return accuracy(probabilities.cpu(), test_labels)


def run_linear(encoder: nn.Module, benchmark: Benchmark, context: EvalContext) -> dict[str, float]:
    """The linear protocol of ``benchmark`` on ``encoder``'s cached features: ``{"top1": %, "top5": %}``."""
    train_features, train_labels, test_features, test_labels = cached_features(encoder, benchmark, context)
    return linear_probe(
        train_features,
        train_labels,
        test_features,
        test_labels,
        benchmark.settings,
        seed=context.seed,
        device=context.runtime.device,
    )
