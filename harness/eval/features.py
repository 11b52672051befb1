"""Features of a frozen encoder and their on-disk cache, so a frozen protocol extracts them once per encoder.

- ``extract_features``: the frozen encoder (eval mode, no grad; bf16 autocast and
  channels_last_3d on CUDA) on every view of a ``ViewDataset`` → features [N, V, D] of its
  readable videos; the unreadable ones are skipped and listed in the dataset's ``bad_files``.
- ``FeatureCache``: those features on disk, keyed by the encoder's weights, the videos of the
  manifest and the view settings.

With ``tokens=True`` (the attentive probe) the encoder's token features are extracted instead
(``encoder.forward_tokens``: [B, L, D] per clip, ``harness.vit.gives_tokens``), kept as float16 [N, V, L, D]
in memory and in the cache: L × D numbers per view instead of D, so the extraction first checks
that the whole tensor fits in half the free memory and says how big it would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from harness.atomic import atomic_file
from harness.data.decode import decoder
from harness.data.manifest import ManifestError
from harness.data.views import UNREADABLE, ViewDataset, collate_views
from harness.eval.context import EvalContext
from harness.eval.spec import Benchmark
from harness.progress import ProgressBar
from harness.runtime import Device, Runtime

log = logging.getLogger(__name__)

CACHE_FORMAT = (
    3  # 2: the unreadable videos are stored with the features; 3: SlowFast's view starts and crop rounding
)
VIEW_SETTINGS = ("frames", "stride", "crop", "short_side", "temporal_views", "spatial_views", "fps")


def benchmark_views(benchmark: Benchmark, split: str, decoder_name: str = "pyav") -> ViewDataset:
    """The benchmark's ``train`` videos with its training views, or its ``test`` (val) videos with
    its test views (temporal × spatial), decoded by the backend ``decoder_name`` (``data.decoder``)."""
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
        decoder=decoder(decoder_name),
    )


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; its previous train/eval mode restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def extract_features(
    encoder: nn.Module,
    dataset: ViewDataset,
    batch_size: int = 8,
    workers: int = 0,
    device: Device = "cpu",
    progress: bool = True,
    tokens: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the frozen ``encoder`` for every view of every readable video.

    An unreadable video is skipped: it has no row in the outputs, and ``dataset.bad_files``
    gets its path and why (noted here, in the main process, so whatever the worker count).

    Args:
        encoder: clips [B, C, T, H, W] → [B, D]; moved to ``device`` in place, evaluated in
            eval mode without gradients, its train/eval mode restored afterwards.
        dataset: items with ``clips`` [V, C, T, H, W] and ``label`` (see ``collate_views``).
        batch_size: videos per forward pass (V clips each).
        tokens: the token features (``encoder.forward_tokens``) instead of the pooled ones.

    Returns:
        features float32 [N, V, D] (tokens: float16 [N, V, L, D]) on the CPU, labels int64 [N],
        of the readable videos in dataset order.

    Raises:
        ManifestError: no video could be read.
        TokensTooLarge: the token features of every video would not fit in half the free memory.
    """
    runtime = Runtime.for_device(device)
    runtime.prepare_model(encoder)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        collate_fn=collate_views,
    )
    bar = ProgressBar(f"features {len(dataset)} videos", len(loader)) if progress else None
    features, labels = [], []
    with eval_mode(encoder), torch.no_grad(), runtime.autocast():
        for step, batch in enumerate(loader, 1):
            for row, why in batch[UNREADABLE].items():
                dataset.bad_files[dataset.entries[row].path] = why
            if "clips" in batch:
                clips = batch["clips"]
                videos, views = clips.shape[:2]
                inputs = runtime.clips_to_device(clips.flatten(0, 1))
                if tokens:
                    out = encoder.forward_tokens(inputs)
                    features.append(out.half().view(videos, views, *out.shape[1:]).cpu())
                    if len(features) == 1:
                        _check_token_memory(features[0], len(dataset), dataset.source)
                else:
                    features.append(encoder(inputs).float().view(videos, views, -1).cpu())
                labels.append(torch.as_tensor(batch["label"], dtype=torch.int64))
            if bar:
                bar.update(step, {})
    if not features:
        where = f"{dataset.source}: " if dataset.source else ""
        raise ManifestError(
            f"{where}none of the {len(dataset)} videos could be read "
            f"(first: {next(iter(dataset.bad_files.values()))}); "
            f"run `rho data check {dataset.source or 'MANIFEST'}` to list them all"
        )
    return torch.cat(features), torch.cat(labels)


class TokensTooLarge(MemoryError):
    """Token features of a benchmark's videos that would not fit in memory (the message says how big)."""


def _check_token_memory(first: torch.Tensor, videos: int, source) -> None:
    """Refuse, before extracting the rest, token features that would take over half the free memory."""
    from harness.data.decode import available_memory

    per_video = first[0].numel() * first.element_size()
    needed, free = per_video * videos, available_memory()
    if needed > free // 2:
        views, length, width = first.shape[1:]
        raise TokensTooLarge(
            f"{source or 'benchmark'}: token features of {videos} videos x {views} views x {length} "
            f"tokens x {width} would take {needed / 2**30:.1f} GiB (float16), over half the "
            f"{free / 2**30:.1f} GiB free; use fewer views (views.train_temporal / test_temporal), "
            "smaller clips or fewer videos, or the linear or kNN protocol (pooled features)"
        )


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

    A file holds the features, the labels, the unreadable videos skipped (path → why), its key
    and a checksum of the tensors; it is written
    to a temporary name and renamed, and read with ``torch.load(weights_only=True)``. A file
    that does not load, holds another key or fails its checksum is reported and recomputed.
    """

    def __init__(self, root: str | Path = "mlruns/features"):
        self.root = Path(root)

    def key(self, encoder_id: str, dataset: ViewDataset, tokens: bool = False) -> str:
        """The cache key of ``dataset``'s features (``tokens``: token features) under the encoder ``encoder_id``."""
        fields = {"format": CACHE_FORMAT, "encoder": encoder_id, "data": dataset_fingerprint(dataset)}
        text = json.dumps({**fields, "tokens": True} if tokens else fields)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, encoder_id: str, key: str) -> Path:
        """``root/<encoder id>-<key prefix>.pt`` (readable, so a run's files are easy to find)."""
        return self.root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', encoder_id)[:80]}-{key[:16]}.pt"

    def load(self, path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]] | None:
        """The features, labels and unreadable videos (path → why) stored at ``path`` under
        ``key``; None when absent or unusable."""
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            features, labels, unreadable, stored_key, checksum = (
                blob["features"],
                blob["labels"],
                dict(blob[UNREADABLE]),
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
        return features, labels, unreadable

    def save(
        self,
        path: Path,
        key: str,
        features: torch.Tensor,
        labels: torch.Tensor,
        unreadable: dict[str, str] | None = None,
    ) -> None:
        """Write atomically: a temporary file beside ``path``, then a rename."""
        checksum = _tensor_digest([("f", features), ("l", labels)])
        blob = {"key": key, "checksum": checksum, "features": features, "labels": labels}
        with atomic_file(path, "wb") as handle:
            torch.save({**blob, UNREADABLE: dict(unreadable or {})}, handle)

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
        tokens: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features [N, V, D] (``tokens``: [N, V, L, D]) and labels [N] of ``dataset``'s
        readable videos; extracted and stored on a miss. ``dataset.bad_files`` gets the
        unreadable ones either way.

        ``encoder_id`` must change whenever the weights do (``cached_features`` appends
        ``weights_fingerprint``).
        """
        key = self.key(encoder_id, dataset, tokens)
        path = self.path(encoder_id, key)
        cached = self.load(path, key)
        if cached is not None:
            features, labels, unreadable = cached
            dataset.bad_files.update({Path(video): why for video, why in unreadable.items()})
            return features, labels
        features, labels = extract_features(encoder, dataset, batch_size, workers, device, progress, tokens)
        unreadable = {str(video): why for video, why in dataset.bad_files.items()}
        self.save(path, key, features, labels, unreadable)
        return features, labels


def cached_features(
    encoder: nn.Module, benchmark: Benchmark, context: EvalContext, tokens: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training features [N, V, D] and labels [N], test features [M, V', D] and labels [M] of
    ``benchmark``'s readable videos (``tokens``: token features, [N, V, L, D] and [M, V', L, D]);
    the unreadable ones are noted in ``context`` (which refuses too many).

    Read from the cache of ``context.cache_dir`` under ``context.encoder_key`` and the weights'
    fingerprint (so changed weights never hit), extracted and stored on a miss.
    """
    cache = FeatureCache(context.cache_dir)
    encoder_id = f"{context.encoder_key}-{weights_fingerprint(encoder)}"
    extract = dict(
        batch_size=context.batch_size,
        workers=context.workers,
        device=context.runtime.device,
        progress=context.progress,
        tokens=tokens,
    )
    outputs = []
    for split, manifest in (("train", benchmark.train), ("test", benchmark.val)):
        views = benchmark_views(benchmark, split, context.decoder)
        outputs += cache.get_or_extract(encoder, views, encoder_id, **extract)
        context.note_skipped(manifest, len(views), views.bad_files)
    train_features, train_labels, test_features, test_labels = outputs
    return train_features, train_labels, test_features, test_labels
