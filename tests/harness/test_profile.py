"""`rho data profile`: measured stream facts on files of known encoding, and a measured recommendation."""

import json
import subprocess
import sys

import pytest
import yaml
from videos import index_frame

from harness.config import load_experiment
from harness.data import write_manifest
from harness.data.encode import write_video
from harness.data.manifest import read_manifest
from harness.data.profile import format_profile, profile_manifest, sample_rows, stream_stats
from harness.speed.media import video_frames

SHORT_ITEMS = ["data.clips=2", "data.frames=4", "data.stride=2"]  # T x stride = 8


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    return {
        # 512x384 at 30 fps, x264 defaults: one long GOP with B-frames
        "large": write_video(root / "large.mp4", video_frames(0, 60, 512, 384), fps=30),
        # 64 px, every frame a keyframe, at the CRF a transcode writes: its GOP-1 copy is the same encode
        "intra": write_video(root / "intra.mp4", (index_frame(i) for i in range(40)), fps=10, crf=23, gop=1),
        "gop5": write_video(root / "gop5.mp4", video_frames(1, 20, 96, 64), fps=10, gop=5, b_frames=False),
    }


def data_config(*overrides):
    return load_experiment(None, [*SHORT_ITEMS, *overrides], check_files=False).data


def test_stream_facts_are_measured_from_the_packets(videos):
    large, intra, gop5 = (stream_stats(videos[k]) for k in ("large", "intra", "gop5"))
    assert (large.codec, large.width, large.height, large.fps) == ("h264", 512, 384, 30)
    assert large.gop == 60 and large.b_frames  # one GOP: the packet count
    assert (intra.width, intra.height, intra.gop, intra.b_frames) == (64, 64, 1, False)
    assert (gop5.width, gop5.height, gop5.gop, gop5.b_frames) == (96, 64, 5, False)
    assert gop5.duration == pytest.approx(2.0) and gop5.bytes_per_s == pytest.approx(
        videos["gop5"].stat().st_size / 2.0
    )
    assert stream_stats(videos["large"].with_name("missing.mp4")).error.startswith("missing")


def test_sample_is_seeded_and_spread():
    rows = sample_rows(1000, 10, seed=3)
    assert rows == sample_rows(1000, 10, seed=3) != sample_rows(1000, 10, seed=4)
    assert [r // 100 for r in rows] == list(range(10))
    assert sample_rows(5, 16) == [0, 1, 2, 3, 4]


def test_long_gop_large_file_gets_a_measured_recommendation(videos, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(videos["large"]), "label": 0}])
    profile = profile_manifest(read_manifest(manifest), data_config(), sample=4)
    assert [(c.short_side, c.gop) for c in profile.candidates] == [(256, 8), (256, 1)]
    assert profile.compared == 1 and profile.videos[0].item_ms > 0
    assert all(c.speedup > 0 and c.disk > 0 for c in profile.candidates)
    assert "rho data transcode MANIFEST OUT --short-side 256 --gop" in profile.recommendation
    assert "x faster items" in profile.recommendation and "x the disk" in profile.recommendation
    text = format_profile(profile)
    assert "512x384" in text and profile.recommendation in text


def test_all_intra_small_file_is_fine_as_is(videos, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(videos["intra"]), "label": 0}])
    profile = profile_manifest(read_manifest(manifest), data_config(), sample=4)
    assert [(c.short_side, c.gop) for c in profile.candidates] == [(None, 8), (None, 1)]
    assert profile.recommendation.startswith("the data is fine as is"), format_profile(profile)


def test_cli_reads_the_config_and_prints_json(videos, tmp_path):
    rows = [{"path": str(videos[k]), "label": i} for i, k in enumerate(("intra", "gop5"))]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(videos["gop5"].read_bytes()[:2000])
    rows.append({"path": str(cut), "label": 0})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"data": {"clips": 3, "frames": 2, "stride": 2}}))
    out = subprocess.run(
        [sys.executable, "-m", "harness", "data", "profile", str(manifest), "data.clips=2"]
        + ["--config", str(config), "--json", "--no-transcode"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert (found["clips"], found["frames"], found["stride"]) == (2, 2, 2)
    assert [v["gop"] for v in found["videos"]] == [1, 5, 0] and found["candidates"] == []
    assert found["videos"][2]["error"].startswith("truncated") and found["videos"][1]["item_ms"] > 0
    bad = subprocess.run(
        [sys.executable, "-m", "harness", "data", "profile", str(manifest), "--sample", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--sample 0" in bad.stderr
