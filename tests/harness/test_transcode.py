"""`rho data transcode`: small real mp4 files re-encoded, then measured on the output."""

import csv
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from bad_files import write_bad_videos
from test_decode import red_corner, write_turned_video
from videos import index_frame, read_index, write_index_video

from harness.data import write_manifest
from harness.data.decode import decode_times, open_video, probe, read_turn
from harness.data.transcode import TranscodeSettings, transcode_manifest


def write_with_audio(path, frames: int = 20, fps: int = 10):
    """An index video (64 px) with an AAC track beside it."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")):
                container.mux(packet)
        for i in range(frames * 16000 // fps // 1024):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 16000, i * 1024, Fraction(1, 16000)
            for packet in audio.encode(chunk):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    return path


@pytest.fixture
def dataset(tmp_path):
    """src/: a 128 px index video (x264 defaults: one long GOP, B-frames), one with audio, a
    phone video turned 90°, and three bad files; train.csv lists them with extra columns."""
    src = tmp_path / "src"
    good = {
        "long": write_index_video(src / "clips" / "long.mp4", 30, fps=10, size=128),
        "audio": write_with_audio(src / "audio.mp4"),
        "phone": write_turned_video(src / "phone.mp4", 90)[0],
    }
    bad = write_bad_videos(src / "bad", good["long"])
    rows = [
        {"path": str(p), "label": i % 2, "class_name": f"c{i % 2}", "start": "0.5" if i == 0 else ""}
        for i, p in enumerate([*good.values(), *bad.values()])
    ]
    (src / "classes.txt").write_text("c0\nc1\n")
    return write_manifest(src / "train.csv", rows), good, bad


def keyframe_spacing(path) -> tuple[list[int], bool]:
    """Indices of the keyframe packets, and whether any packet is presented before an earlier one."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    pts = [p.pts for p in packets]
    return [i for i, p in enumerate(packets) if p.is_keyframe], any(
        b < a for a, b in zip(pts, pts[1:], strict=False)
    )


def rho(*args):
    return subprocess.run(
        [sys.executable, "-m", "harness", "data", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("gop", [4, 1])
def test_copies_are_smaller_keyframed_as_asked_silent_and_frame_exact(dataset, tmp_path, gop):
    manifest, good, _ = dataset
    out = tmp_path / "out"
    summary = transcode_manifest(manifest, out, TranscodeSettings(short_side=64, gop=gop), workers=2)
    assert summary.converted == 3 and summary.kept == 0 and len(summary.bad) == 3
    long = out / "clips" / "long.mp4"
    keyframes, reordered = keyframe_spacing(long)
    assert keyframes == list(range(0, 30, gop)) and not reordered  # exact GOPs, no B-frames
    with av.open(str(out / "audio.mp4")) as container:
        assert [s.type for s in container.streams] == ["video"]
    with open_video(long) as container:
        info = probe(container)
        assert (info.width, info.height, info.num_frames, info.fps) == (64, 64, 30, 10)
        frames, padded = decode_times(container, np.arange(30) / 10)
    assert padded == 0 and [read_index(f) for f in frames] == list(range(30))


def test_rotated_video_is_upright_without_side_data(dataset, tmp_path):
    manifest, good, _ = dataset
    out = tmp_path / "out"
    transcode_manifest(manifest, out, TranscodeSettings(short_side=None, gop=2))
    with open_video(good["phone"]) as container:
        expected, _ = decode_times(container, np.array([0.0]), autorotate=True)
    with open_video(out / "phone.mp4") as container:
        stored, _ = decode_times(container, np.array([0.0]), autorotate=False)
        assert read_turn(container) == "none"  # no display matrix left to apply
    assert stored.shape == expected.shape == (1, 64, 32, 3)
    assert red_corner(stored[0]) == red_corner(expected[0])
    assert np.abs(stored.astype(int) - expected.astype(int)).mean() < 4


def test_manifest_keeps_good_rows_and_lists_bad_ones(dataset, tmp_path):
    manifest, good, bad = dataset
    out = tmp_path / "out"
    result = rho("transcode", manifest, out, "--short-side", 64, "--gop", 8, "--workers", 2)
    assert result.returncode == 1, result.stderr
    assert "3 converted, 0 already done, 3 bad" in result.stdout
    assert sum(line.startswith("BAD ") for line in result.stdout.splitlines()) == 3
    with open(out / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == ["clips/long.mp4", "audio.mp4", "phone.mp4"]
    assert [(r["label"], r["class_name"], r["start"]) for r in rows] == [
        ("0", "c0", "0.5"),
        ("1", "c1", ""),
        ("0", "c0", ""),
    ]
    listed = (out / "train.bad.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(map(str, bad.values()))
    assert (out / "classes.txt").read_text() == "c0\nc1\n"
    check = rho("check", out / "train.csv")
    assert check.returncode == 0 and "3 of 3 videos ok" in check.stdout
    assert "rho data profile" in check.stderr  # the pointer for slow loading


def test_rerun_skips_finished_copies_and_redoes_a_killed_one(dataset, tmp_path):
    manifest, _, _ = dataset
    out = tmp_path / "out"
    settings = TranscodeSettings(short_side=64, gop=8)
    transcode_manifest(manifest, out, settings)
    kept = {p: p.stat().st_mtime_ns for p in (out / "audio.mp4", out / "phone.mp4")}
    redone = out / "clips" / "long.mp4"
    redone.unlink()  # a run killed while writing it left only its temp file
    leftover = redone.with_name(".long.mp4.999999999.tmp")
    leftover.write_bytes(b"half a video")
    summary = transcode_manifest(manifest, out, settings)
    assert (summary.converted, summary.kept, len(summary.bad)) == (1, 2, 3)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert redone.is_file() and not leftover.exists()
    assert ".tmp" not in (out / "train.csv").read_text()
    again = rho("transcode", manifest, out, "--short-side", 64, "--gop", 8)
    assert again.returncode == 1 and "0 converted, 3 already done, 3 bad" in again.stdout


def test_only_good_inputs_exit_zero(tmp_path):
    video = write_index_video(tmp_path / "src" / "a.mp4", 10, fps=10)
    manifest = write_manifest(tmp_path / "src" / "m.csv", [{"path": str(video), "label": 0}])
    result = rho("transcode", manifest, tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 converted, 0 already done, 0 bad" in result.stdout
    assert not (tmp_path / "out" / "m.bad.txt").exists()


@pytest.mark.parametrize(
    "options,message",
    [
        (["--gop", "0"], "--gop 0: use a keyframe interval >= 1"),
        (["--short-side", "15"], "--short-side 15: use an even number"),
        (["--crf", "60"], "--crf 60: use 0..51"),
        (["--codec", "nope"], "--codec nope: not a video encoder"),
        (["--fps", "-1"], "--fps -1.0: use a frame rate"),
        (["--workers", "0"], "--workers 0: use 1 or more"),
        (["--preset", "nope"], "--preset nope: the encoder refuses them"),
    ],
)
def test_bad_options_are_refused_before_any_work(dataset, tmp_path, options, message):
    manifest, _, _ = dataset
    result = rho("transcode", manifest, tmp_path / "out", *options)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_folders_and_changed_settings_are_refused(dataset, tmp_path):
    manifest, _, _ = dataset
    same = rho("transcode", manifest, manifest.parent)
    assert same.returncode == 2 and f"OUT {manifest.parent} is the folder of {manifest}" in same.stderr
    missing = rho("transcode", tmp_path / "nope.csv", tmp_path / "out")
    assert missing.returncode == 2 and "nope.csv does not exist" in missing.stderr
    first = rho("transcode", manifest, tmp_path / "out", "--gop", 8, "--short-side", 64)
    assert first.returncode == 1
    changed = rho("transcode", manifest, tmp_path / "out", "--gop", 4, "--short-side", 64)
    assert changed.returncode == 2 and "holds a transcode with other settings" in changed.stderr
    assert os.path.isfile(tmp_path / "out" / "train.csv")


def test_fps_resamples_to_the_frames_shown_at_each_time(tmp_path):
    video = write_index_video(tmp_path / "src" / "a.mp4", 30, fps=10)
    manifest = write_manifest(tmp_path / "src" / "m.csv", [{"path": str(video), "label": 0}])
    transcode_manifest(manifest, tmp_path / "out", TranscodeSettings(fps=5, gop=4))
    with open_video(tmp_path / "out" / "a.mp4") as container:
        info = probe(container)
        frames, _ = decode_times(container, np.arange(15) / 5)
    assert (info.fps, info.num_frames) == (5, 15)
    assert [read_index(f) for f in frames] == list(range(0, 30, 2))
