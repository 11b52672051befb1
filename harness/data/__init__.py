"""The data pipeline: manifests, ρ-clip sampling, PyAV decoding, per-clip augmentation."""

from harness.data.dataset import MultiClipDataset
from harness.data.decode import BadVideo, VideoInfo
from harness.data.manifest import ManifestError, VideoEntry, read_manifest, write_manifest
from harness.data.transforms import eval_transform, train_transform

__all__ = [
    "BadVideo",
    "ManifestError",
    "MultiClipDataset",
    "VideoEntry",
    "VideoInfo",
    "eval_transform",
    "read_manifest",
    "train_transform",
    "write_manifest",
]
