"""Evaluation of an encoder on a benchmark: the linear, kNN and fine-tuning protocols.

- ``extract_features``: the frozen encoder (eval mode, no grad; bf16 autocast and
  channels_last_3d on CUDA) on every view of a ``ViewDataset`` → features [N, V, D].
- ``FeatureCache``: those features on disk, keyed by the encoder's weights, the videos of the
  manifest and the view settings, so a frozen protocol extracts them once per encoder.
- ``linear``: the training features (every training view is one sample) are standardised with
  their own per-dimension mean and std — a BatchNorm without affine before the classifier, as in
  the MAE / MoCo v3 linear probes, which makes one lr fit features of any scale — then an
  ``nn.Linear`` is trained with SGD momentum, linear warmup and a half-cosine lr; a test video's
  softmax probabilities are averaged over its K temporal × S spatial views.
- ``knn``: features L2-normalised per view and averaged over views; k nearest training videos
  by cosine similarity vote with weight exp(s / τ) (InstDisc, SlowFast's kNN monitor).
- ``finetune``: a copy of the encoder plus dropout and a linear head, trained end to end on
  augmented training clips (SGD momentum, warmup, half-cosine; no weight decay on biases and
  norm layers), then tested like ``linear``. The benchmark files give the paper's settings
  (``benchmarks/ucf101_split1_finetune.yaml``) or CPU-sized ones (``synth_finetune.yaml``).

Accuracies are percentages; top-5 is top-min(5, classes).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.atomic import atomic_file
from harness.benchmark import Benchmark, FinetuneSpec, KnnSpec, LinearSpec
from harness.data import MultiClipDataset, train_transform
from harness.data.epoch_order import EpochSampler
from harness.data.manifest import read_manifest
from harness.data.views import ViewDataset
from harness.optim import lr_at, set_lr
from harness.progress import ProgressBar

log = logging.getLogger(__name__)

Device = str | torch.device
CACHE_FORMAT = 1
VIEW_SETTINGS = ("frames", "stride", "crop", "short_side", "temporal_views", "spatial_views", "fps")
KNN_QUERY_CHUNK = 256  # test videos per similarity matrix (256 × 240k Kinetics videos: 1 GB)


def evaluate(
    encoder: nn.Module,
    benchmark: Benchmark,
    *,
    encoder_key: str,
    cache_dir: str | Path = "mlruns/features",
    device: Device = "cpu",
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 8,
) -> dict[str, float]:
    """Run ``benchmark``'s protocol on ``encoder``.

    Args:
        encoder: clips [B, C, T, H, W] → features [B, D]; moved to ``device`` in place, its
            train/eval mode restored afterwards; fine-tuning trains a copy.
        benchmark: from ``harness.benchmark.load_benchmark``.
        encoder_key: names the encoder in the feature cache (e.g. a run's config hash); the
            cache key also holds a fingerprint of the weights, so changed weights never hit.
        cache_dir: feature cache folder.
        device: where the encoder (and the linear classifier) run.
        workers: DataLoader decoding processes.
        seed: the classifier's initialisation, data order and augmentation.
        progress: print progress bars.
        batch_size: videos per forward pass when extracting features (each with all its views).

    Returns:
        ``{"eval.<name>.<protocol>.top1": %, "eval.<name>.<protocol>.top5": %}``.
    """
    if benchmark.protocol == "finetune":
        scores = finetune(
            encoder,
            benchmark,
            device=device,
            workers=workers,
            seed=seed,
            progress=progress,
            batch_size=batch_size,
        )
    else:
        cache = FeatureCache(cache_dir)
        encoder_id = f"{encoder_key}-{weights_fingerprint(encoder)}"
        extract = dict(batch_size=batch_size, workers=workers, device=device, progress=progress)
        train_features, train_labels = cache.get_or_extract(
            encoder, benchmark_views(benchmark, "train"), encoder_id, **extract
        )
        test_features, test_labels = cache.get_or_extract(
            encoder, benchmark_views(benchmark, "test"), encoder_id, **extract
        )
        if isinstance(benchmark.settings, LinearSpec):
            scores = linear_probe(
                train_features,
                train_labels,
                test_features,
                test_labels,
                benchmark.settings,
                seed=seed,
                device=device,
            )
        else:
            scores = knn_probe(train_features, train_labels, test_features, test_labels, benchmark.settings)
    return {benchmark.metric(name): value for name, value in scores.items()}


def benchmark_views(benchmark: Benchmark, split: str) -> ViewDataset:
    """The benchmark's ``train`` videos with its training views, or its ``test`` (val) videos with
    its test views (temporal × spatial)."""
    views = benchmark.views
    return ViewDataset(
        benchmark.train if split == "train" else benchmark.val,
        views.frames,
        views.stride,
        views.crop,
        short_side=views.short_side,
        temporal_views=getattr(views, f"{split}_temporal"),
        spatial_views=getattr(views, f"{split}_spatial"),
        fps=views.fps,
    )


# --- features ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; its previous train/eval mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _to_device(module: nn.Module, device: torch.device) -> nn.Module:
    """Move ``module`` to ``device`` in place; channels_last_3d weights on CUDA."""
    module.to(device)
    return module.to(memory_format=torch.channels_last_3d) if device.type == "cuda" else module


def _clips_to_device(clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Clips [B, C, T, H, W] on ``device``; channels_last_3d on CUDA."""
    clips = clips.to(device, non_blocking=True)
    return clips.contiguous(memory_format=torch.channels_last_3d) if device.type == "cuda" else clips


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing (fp32) elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def extract_features(
    encoder: nn.Module,
    dataset: ViewDataset,
    batch_size: int = 8,
    workers: int = 0,
    device: Device = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the frozen ``encoder`` for every view of every video.

    Args:
        encoder: clips [B, C, T, H, W] → [B, D]; moved to ``device`` in place, evaluated in
            eval mode without gradients, its train/eval mode restored afterwards.
        dataset: items with ``clips`` [V, C, T, H, W] and ``label``.
        batch_size: videos per forward pass (V clips each).

    Returns:
        features float32 [N, V, D] on the CPU, labels int64 [N], in dataset order.
    """
    device = torch.device(device)
    _to_device(encoder, device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    bar = ProgressBar(f"features {len(dataset)} videos", len(loader)) if progress else None
    features, labels = [], []
    with _eval_mode(encoder), torch.no_grad(), _autocast(device):
        for step, batch in enumerate(loader, 1):
            clips = batch["clips"]
            videos, views = clips.shape[:2]
            out = encoder(_clips_to_device(clips.flatten(0, 1), device))
            features.append(out.float().view(videos, views, -1).cpu())
            labels.append(torch.as_tensor(batch["label"], dtype=torch.int64))
            if bar:
                bar.update(step, {})
    return torch.cat(features), torch.cat(labels)


def _tensor_digest(tensors: list[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and bytes of tensors."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's state (parameters and buffers, e.g. BatchNorm statistics)."""
    return _tensor_digest(sorted(module.state_dict().items()))[:16]


def dataset_fingerprint(dataset: ViewDataset) -> str:
    """A hash of what ``dataset`` yields: its videos (path, label, window, size, mtime) and view settings.

    Video files are assumed to change only by being rewritten (size or mtime changes).
    """
    videos = []
    for entry in dataset.entries:
        stat = entry.path.stat()
        videos.append(
            [os.path.abspath(entry.path), entry.label, entry.window, stat.st_size, stat.st_mtime_ns]
        )
    views = {name: getattr(dataset, name) for name in VIEW_SETTINGS}
    text = json.dumps({"videos": videos, "views": views}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class FeatureCache:
    """Extracted features on disk: one ``torch.save`` file per (encoder, videos, views).

    A file holds the features, the labels, its key and a checksum of the tensors; it is written
    to a temporary name and renamed, and read with ``torch.load(weights_only=True)``. A file
    that does not load, holds another key or fails its checksum is reported and recomputed.
    """

    def __init__(self, root: str | Path = "mlruns/features"):
        self.root = Path(root)

    def key(self, encoder_id: str, dataset: ViewDataset) -> str:
        """The cache key of ``dataset``'s features under the encoder ``encoder_id``."""
        text = json.dumps(
            {"format": CACHE_FORMAT, "encoder": encoder_id, "data": dataset_fingerprint(dataset)}
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, encoder_id: str, key: str) -> Path:
        """``root/<encoder id>-<key prefix>.pt`` (readable, so a run's files are easy to find)."""
        return self.root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', encoder_id)[:80]}-{key[:16]}.pt"

    def load(self, path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The features and labels stored at ``path`` under ``key``; None when absent or unusable."""
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            features, labels, stored_key, checksum = (
                blob["features"],
                blob["labels"],
                blob["key"],
                blob["checksum"],
            )
        except Exception as exc:  # a damaged file fails in many ways (zip, pickle, missing keys)
            log.warning(
                "feature cache %s is unreadable (%s: %s); extracting again", path, type(exc).__name__, exc
            )
            return None
        if stored_key != key or checksum != _tensor_digest([("f", features), ("l", labels)]):
            log.warning("feature cache %s does not match its key or checksum; extracting again", path)
            return None
        return features, labels

    def save(self, path: Path, key: str, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Write atomically: a temporary file beside ``path``, then a rename."""
        checksum = _tensor_digest([("f", features), ("l", labels)])
        with atomic_file(path, "wb") as handle:
            torch.save({"key": key, "checksum": checksum, "features": features, "labels": labels}, handle)

    def get_or_extract(
        self,
        encoder: nn.Module,
        dataset: ViewDataset,
        encoder_id: str,
        *,
        batch_size: int = 8,
        workers: int = 0,
        device: Device = "cpu",
        progress: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features [N, V, D] and labels [N] of ``dataset``; extracted and stored on a miss.

        ``encoder_id`` must change whenever the weights do (``evaluate`` appends
        ``weights_fingerprint``).
        """
        key = self.key(encoder_id, dataset)
        path = self.path(encoder_id, key)
        cached = self.load(path, key)
        if cached is not None:
            return cached
        features, labels = extract_features(encoder, dataset, batch_size, workers, device, progress)
        self.save(path, key, features, labels)
        return features, labels


# --- scoring ------------------------------------------------------------------------------------


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of rows of ``scores`` [N, C] whose label is among the k highest."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).double().mean().item()


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of class scores [N, C]; top-5 is top-min(5, C)."""
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5)}


def view_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-view logits [N, V, C] → class probabilities averaged over the views [N, C]."""
    return logits.float().softmax(dim=-1).mean(dim=1)


def _num_classes(*labels: torch.Tensor) -> int:
    return int(max(int(x.max()) for x in labels)) + 1


# --- linear -------------------------------------------------------------------------------------


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-5) -> list[torch.Tensor]:
    """Subtract the per-dimension mean of ``train`` [M, D] and divide by sqrt(var + eps), from all tensors."""
    mean, var = train.mean(dim=0), train.var(dim=0, unbiased=False)
    scale = (var + eps).rsqrt()
    return [(x - mean) * scale for x in (train, *others)]


def fit_linear(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: LinearSpec, seed: int = 0
) -> nn.Linear:
    """A softmax classifier on ``features`` [M, D] (on their device), zero-initialised.

    Minibatch SGD with momentum and weight decay; lr warms up linearly over
    ``settings.warmup_epochs`` then follows a half-cosine to 0 over ``settings.epochs``. The
    shuffling comes from a generator seeded with ``seed``.
    """
    classifier = nn.Linear(features.shape[1], num_classes).to(features.device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(
        classifier.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    total, warmup = settings.epochs * steps_per_epoch, round(settings.warmup_epochs * steps_per_epoch)
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for batch in order.split(settings.batch_size):
            set_lr(optimizer, lr_at(step, total, warmup, settings.lr))
            loss = F.cross_entropy(classifier(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return classifier


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
    classifier = fit_linear(train, targets, _num_classes(train_labels, test_labels), settings, seed)
    with torch.no_grad():
        probabilities = view_probabilities(classifier(test))
    return accuracy(probabilities.cpu(), test_labels)


# --- kNN ----------------------------------------------------------------------------------------


def video_embeddings(features: torch.Tensor) -> torch.Tensor:
    """Per-view features [N, V, D] → each view L2-normalised, then averaged over views [N, D]."""
    return F.normalize(features.float(), dim=-1).mean(dim=1)


def knn_scores(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Weighted kNN class scores: each test row's k most cosine-similar training rows vote exp(s / τ).

    Args:
        train: [N, D] embeddings; test: [M, D] (both L2-normalised here).
        train_labels: [N] class indices.
        k: neighbours, capped at N.

    Returns:
        Scores [M, num_classes]: the summed weights of the neighbours of each class.
    """
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for queries in test.split(KNN_QUERY_CHUNK):
        similarity, neighbours = (queries @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes, device=test.device)
        scores.append(
            votes.scatter_add_(1, train_labels.to(test.device)[neighbours], (similarity / temperature).exp())
        )
    return torch.cat(scores)


def knn_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    settings: KnnSpec,
) -> dict[str, float]:
    """Weighted kNN classification of test videos [M, V', D] against training videos [N, V, D]."""
    train, test = video_embeddings(train_features), video_embeddings(test_features)
    classes = _num_classes(train_labels, test_labels)
    return accuracy(
        knn_scores(train, train_labels, test, classes, settings.k, settings.temperature), test_labels
    )


def knn_monitor(
    encoder: nn.Module,
    train_dataset: ViewDataset,
    val_dataset: ViewDataset,
    k: int = 200,
    device: Device = "cpu",
    workers: int = 0,
    batch_size: int = 32,
    temperature: float = 0.07,
) -> float:
    """kNN top-1 (%) of ``val_dataset`` against ``train_dataset``, for monitoring pretraining.

    No cache (the encoder changes every epoch); the encoder's train/eval mode is restored, so
    it can run between training epochs. Use single centre views for speed.
    """
    train, train_labels = extract_features(
        encoder, train_dataset, batch_size, workers, device, progress=False
    )
    val, val_labels = extract_features(encoder, val_dataset, batch_size, workers, device, progress=False)
    num_classes = _num_classes(train_labels, val_labels)
    scores = knn_scores(
        video_embeddings(train), train_labels, video_embeddings(val), num_classes, k, temperature
    )
    return topk_accuracy(scores, val_labels, 1)


# --- fine-tuning --------------------------------------------------------------------------------


def _feature_dim(encoder: nn.Module, frames: int, crop: int, device: torch.device) -> int:
    """D of ``encoder``'s output, from one blank clip in eval mode."""
    with _eval_mode(encoder), torch.no_grad():
        return encoder(torch.zeros(1, 3, frames, crop, crop, device=device)).shape[-1]


def classifier_network(
    encoder: nn.Module, num_classes: int, dropout: float, frames: int, crop: int, device: Device = "cpu"
) -> nn.Sequential:
    """A copy of ``encoder`` → dropout → linear head (weights N(0, 0.01²), bias 0, as SlowFast's head).

    ``frames`` and ``crop`` give the clip shape used once to find the encoder's feature size.
    """
    device = torch.device(device)
    body = copy.deepcopy(encoder).to(device)
    head = nn.Linear(_feature_dim(body, frames, crop, device), num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return _to_device(nn.Sequential(body, nn.Dropout(dropout), head), device)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of dimension ≥ 2 only (not on biases and norm layers)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_classifier(
    model: nn.Module,
    dataset: MultiClipDataset,
    settings: FinetuneSpec,
    device: Device = "cpu",
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Train ``model`` (clips [B, C, T, H, W] → logits) on view 0 of ``dataset``'s items with cross-entropy.

    ``dataset`` should hold one view per item (``min_views=1`` at ρ = 1); any others are decoded
    and augmented for nothing."""
    device = torch.device(device)
    sampler = EpochSampler(len(dataset), seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.SGD(
        _param_groups(model, settings.weight_decay), lr=settings.lr, momentum=settings.momentum
    )
    total, warmup = settings.epochs * len(loader), round(settings.warmup_epochs * len(loader))
    bar = ProgressBar("finetune", settings.epochs) if progress else None
    model.train()
    step = 0
    for epoch in range(settings.epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            lr = lr_at(step, total, warmup, settings.lr)
            set_lr(optimizer, lr)
            with _autocast(device):
                logits = model(_clips_to_device(batch["clips"][:, 0], device))
            loss = F.cross_entropy(logits.float(), batch["label"].to(device))
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"fine-tuning loss became {loss.item()} at step {step}; lower the benchmark's lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if bar:
            bar.update(epoch + 1, {"loss": loss.item(), "lr": lr})


def finetune(
    encoder: nn.Module,
    benchmark: Benchmark,
    *,
    device: Device = "cpu",
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 8,
) -> dict[str, float]:
    """Fine-tune a copy of ``encoder`` with a linear head on the training videos; test with view averaging.

    Training items are one clip per video (``MultiClipDataset`` ρ = 1, one view) with the
    benchmark's augmentation; ``encoder`` itself is left untouched. Randomness (head init,
    dropout, data) derives from ``seed`` without disturbing the caller's RNG.

    Returns:
        ``{"top1": %, "top5": %}`` on the test videos, softmax averaged over the test views.
    """
    settings, views = benchmark.settings, benchmark.views
    assert isinstance(settings, FinetuneSpec), benchmark.protocol
    device = torch.device(device)
    train_entries, test_set = read_manifest(benchmark.train), benchmark_views(benchmark, "test")
    labels = [torch.tensor([e.label for e in entries]) for entries in (train_entries, test_set.entries)]
    augment = train_transform(views.crop, settings.augment)
    train_set = MultiClipDataset(
        train_entries,
        clips=1,
        frames=views.frames,
        stride=views.stride,
        transform=augment,
        seed=seed,
        fps=views.fps,
        min_views=1,  # one augmented clip per video and step: no second view decoded and thrown away
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        classes = _num_classes(*labels)
        model = classifier_network(encoder, classes, settings.dropout, views.frames, views.crop, device)
        train_classifier(model, train_set, settings, device, workers, seed, progress)
    logits, test_labels = extract_features(model, test_set, batch_size, workers, device, progress)
    return accuracy(view_probabilities(logits), test_labels)
