"""Fixtures for the data tests: small real mp4 files whose frames show their index."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videos import write_index_video  # noqa: E402

from harness.data.manifest import write_manifest  # noqa: E402


@pytest.fixture(scope="session")
def index_videos(tmp_path_factory) -> dict[str, Path]:
    """Three index videos (10 fps): 100 frames (GOP 12), 150 frames (one long GOP), 12 frames (short)."""
    root = tmp_path_factory.mktemp("index_videos")
    return {
        "long": write_index_video(root / "long.mp4", 100, fps=10, gop=12),
        "one_gop": write_index_video(root / "one_gop.mp4", 150, fps=10),
        "short": write_index_video(root / "short.mp4", 12, fps=10),
    }


@pytest.fixture(scope="session")
def index_manifest(index_videos, tmp_path_factory) -> Path:
    """A manifest of the long and one-GOP index videos, labels 0 and 1."""
    out = tmp_path_factory.mktemp("manifest") / "train.csv"
    return write_manifest(
        out,
        [{"path": str(index_videos["long"]), "label": 0}, {"path": str(index_videos["one_gop"]), "label": 1}],
    )


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic dataset (12 train / 8 val videos of 1 s at 32 px) for end-to-end tests."""
    from harness.data.synth import SynthSpec, synthesize

    root = tmp_path_factory.mktemp("tiny_synth")
    return synthesize(
        root, SynthSpec(train_videos=12, val_videos=8, classes=2, duration=1.0, fps=8, size=32), workers=1
    )


def tiny_experiment_tree(synth: dict[str, Path], tmp: Path) -> dict:
    """An experiment (as a nested dict) that pretrains in about a second per epoch on ``tiny_synth``."""
    return {
        "data": {
            "train": str(synth["train"]),
            "val": str(synth["val"]),
            "clips": 2,
            "frames": 2,
            "stride": 2,
            "crop": 16,
            "batch_size": 4,
            "workers": 0,
        },
        "backbone": {"name": "r3d_tiny", "width": 4},
        "method": {"name": "simclr", "temperature": 0.2, "hidden_dims": [16], "out_dim": 8},
        "optim": {"name": "sgd", "lr": 0.05, "base_batch_size": 4, "epochs": 2, "warmup_epochs": 0},
        "runtime": {"output_dir": str(tmp / "checkpoints"), "experiment": "tests", "log_every": 1},
    }


def write_tiny_knn_benchmark(synth: dict[str, Path], folder: Path) -> Path:
    """``folder/knn.yaml``: a kNN benchmark (``tiny-knn``) on ``tiny_synth`` that runs in a second."""
    benchmark = folder / "knn.yaml"
    benchmark.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-knn",
                "protocol": "knn",
                "train": str(synth["train"]),
                "val": str(synth["val"]),
                "views": {"frames": 2, "stride": 2, "crop": 16},
                "knn": {"k": 5},
            }
        )
    )
    return benchmark
