"""The tiny experiment and kNN benchmark that end-to-end tests run on the ``tiny_synth`` fixture."""

from __future__ import annotations

from pathlib import Path

import yaml


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
