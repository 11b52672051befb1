"""Fixtures for the data tests: small real mp4 files whose frames show their index."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
        out, [{"path": str(index_videos["long"]), "label": 0}, {"path": str(index_videos["one_gop"]), "label": 1}]
    )
