"""What a protocol run gets besides the encoder and the benchmark: where it runs and how."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.runtime import Runtime


@dataclass(frozen=True)
class EvalContext:
    """The settings ``evaluate`` hands every protocol.

    Attributes:
        runtime: the device, with bf16 autocast and channels_last_3d on CUDA.
        encoder_key: names the encoder in the feature cache (e.g. a run's config hash).
        cache_dir: the feature cache folder (frozen protocols only).
        workers: DataLoader decoding processes.
        seed: the classifier's initialisation, data order and augmentation.
        progress: print progress bars.
        batch_size: videos per forward pass when extracting features (each with all its views).
    """

    runtime: Runtime
    encoder_key: str
    cache_dir: Path
    workers: int = 0
    seed: int = 0
    progress: bool = True
    batch_size: int = 8
