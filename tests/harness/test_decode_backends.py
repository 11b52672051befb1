"""Decoder backends (``data.decoder``): torchcodec gives PyAV's frames, bad files and errors alike; resize in the decoder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_files import write_bad_videos
from test_decode import write_turned_video, write_vfr_video
from torchvision.transforms.v2 import functional as TF
from videos import read_index, write_index_video

from harness.config import ConfigError, load_experiment, torchcodec_problem, torchcodec_unavailable
from harness.data import MultiClipDataset
from harness.data.decode import BadVideo, PyAVDecoder, decode_clips, decoder, scaled_size
from harness.data.encode import write_video
from harness.data.manifest import VideoEntry
from harness.speed.media import video_frames

ROOT = Path(__file__).resolve().parents[2]
MISSING = torchcodec_unavailable()
needs_torchcodec = pytest.mark.skipif(MISSING is not None, reason=f"torchcodec cannot decode here: {MISSING}")


def textured(path: Path, frames: int, fps: int, width: int = 96, height: int = 64, gop: int | None = None):
    """An H.264 mp4 with texture and motion (x264 defaults unless ``gop``), as the benchmarks use."""
    return write_video(path, video_frames(3, frames, width, height), fps=fps, crf=23, gop=gop)


def both(path, times, **options):
    """(PyAV frames, padded), (torchcodec frames, padded) of ``times``."""
    out = []
    for backend in (PyAVDecoder(), decoder("torchcodec")):
        video = backend.open(path, **options)
        try:
            out.append(video.at(np.asarray(times, dtype=np.float64)))
        finally:
            video.close()
    return out


@needs_torchcodec
@pytest.mark.parametrize(
    "fps,grid_fps,stride,gop",
    [(30, None, 8, None), (25, None, 3, 12), (30, 20, 2, None), (10, 15, 1, 4), (30, 12.5, 4, 30)],
)
def test_torchcodec_frames_are_pyav_frames_bit_for_bit(tmp_path, fps, grid_fps, stride, gop):
    """Constant-rate H.264: the same uint8 frames for the same clips, seeking into the middle
    (short GOPs) and with resampled grids whose times fall half-way between frames (ties)."""
    path = textured(tmp_path / "v.mp4", 4 * fps, fps, gop=gop)
    entry = VideoEntry(path, 0)
    for starts in ([0], [fps], [2 * fps, fps // 2], [3 * fps - 5, 1, 2 * fps + 3]):
        pick = lambda n, span, grid, s=starts: np.minimum(np.array(s), max(0, n - span))  # noqa: E731
        ours = decode_clips(entry, 4, stride, grid_fps, pick, backend=PyAVDecoder())
        theirs = decode_clips(entry, 4, stride, grid_fps, pick, backend=decoder("torchcodec"))
        assert ours[0].dtype == theirs[0].dtype == np.uint8 and ours[0].shape == theirs[0].shape
        assert np.array_equal(ours[0], theirs[0]), (starts, np.abs(ours[0] - theirs[0].astype(int)).max())
        assert np.array_equal(ours[1], theirs[1]) and ours[2] == theirs[2]


@needs_torchcodec
def test_torchcodec_follows_the_shown_frame_rules(tmp_path):
    """Index frames: times past the end repeat the last frame (and are counted), VFR follows the
    real timestamps, display matrices turn (and flip) frames, autorotate=False keeps them stored."""
    short = write_index_video(tmp_path / "short.mp4", 12, fps=10)
    (a, pad_a), (b, pad_b) = both(short, np.arange(20) / 10)
    assert np.array_equal(a, b) and pad_a == pad_b == 8
    assert [read_index(f) for f in b] == [*range(12), *[11] * 8]
    vfr, _ = write_vfr_video(tmp_path / "vfr.mp4")
    times = np.linspace(0, 2.4, 97)
    (a, pad_a), (b, pad_b) = both(vfr, times)
    assert np.array_equal(a, b) and pad_a == pad_b
    for degrees, hflip, vflip in [
        (90, False, False),
        (270, False, False),
        (90, True, False),
        (0, False, True),
    ]:
        turned, _ = write_turned_video(tmp_path / f"t{degrees}{hflip}{vflip}.mp4", degrees, hflip, vflip)
        for autorotate in (True, False):
            (a, _), (b, _) = both(turned, [0.0, 0.1], autorotate=autorotate)
            assert a.shape == b.shape and np.array_equal(a, b), (degrees, hflip, vflip, autorotate)


@needs_torchcodec
def test_bad_files_give_the_same_bad_video_and_skips(tmp_path, caplog):
    good = textured(tmp_path / "good.mp4", 40, 10)
    bad = write_bad_videos(tmp_path / "bad", good)
    bad["missing"] = tmp_path / "nowhere.mp4"
    for kind, path in bad.items():
        messages = []
        for backend in (PyAVDecoder(), decoder("torchcodec")):
            with pytest.raises(BadVideo) as raised:
                decode_clips(VideoEntry(path, 0), 2, 2, None, lambda n, s, f: np.array([0]), backend=backend)
            messages.append(str(raised.value))
        assert messages[0] == messages[1] and messages[0].startswith(f"{path}: {kind}"), messages
    entries = [VideoEntry(bad["truncated"], 0), VideoEntry(good, 1), VideoEntry(bad["empty"], 0)]
    items = []
    for backend in (None, decoder("torchcodec")):
        dataset = MultiClipDataset(entries, 2, 4, 2, seed=3, decoder=backend)
        items.append([dataset[i] for i in range(len(entries))])
        assert dataset.bad_files == {bad["truncated"], bad["empty"]}
    for ours, theirs in zip(*items, strict=True):
        assert ours["index"] == theirs["index"] and ours["skipped"] == theirs["skipped"]
        assert torch.equal(ours["clips"], theirs["clips"]) and torch.equal(ours["starts"], theirs["starts"])


def test_scaled_size_matches_torchvision_resize_and_never_upscales():
    for width, height, short in [(340, 256, 128), (640, 360, 112), (256, 340, 128), (101, 77, 50)]:
        expected = TF.resize(torch.zeros(1, 3, height, width), [short], antialias=True).shape[-2:]
        assert scaled_size(width, height, short) == (expected[1], expected[0])
    assert scaled_size(96, 64, 128) == (96, 64) and scaled_size(96, 64, None) == (96, 64)


@pytest.mark.parametrize("backend", ["pyav", pytest.param("torchcodec", marks=needs_torchcodec)])
def test_resize_in_the_decoder_equals_decode_then_resize(tmp_path, backend):
    """Frames scaled in the decoder have torchvision's shape and the same picture (bilinear
    both, so within a few grey levels on average, not bit for bit)."""
    path = textured(tmp_path / "v.mp4", 30, 10, width=160, height=96)
    times = np.array([0.0, 1.3, 2.9])
    full, _ = PyAVDecoder().open(path).at(times)
    video = decoder(backend).open(path, short_side=48)
    small, _ = video.at(times)
    video.close()
    reference = TF.resize(torch.from_numpy(full).permute(0, 3, 1, 2), [48], antialias=True).permute(
        0, 2, 3, 1
    )
    assert small.shape == tuple(reference.shape) == (3, 48, 80, 3)
    difference = np.abs(small.astype(np.float64) - reference.numpy())
    assert difference.mean() < 4.0 and np.percentile(difference, 99) < 40, difference.mean()
    # and a clip through the dataset: the training transform crops from the smaller frames
    item = MultiClipDataset([VideoEntry(path, 0)], 2, 2, 2, decoder=decoder(backend), decode_short_side=48)[0]
    assert item["clips"].shape == (2, 3, 2, 48, 80)


def test_decoder_is_chosen_by_the_config(tmp_path):
    from harness.train.factories import train_dataset

    path = textured(tmp_path / "v.mp4", 20, 10)
    manifest = tmp_path / "train.csv"
    manifest.write_text(f"path,label\n{path},0\n")
    plain = load_experiment(overrides=[f"data.train={manifest}"])
    assert (plain.data.decoder, plain.data.decode_device, plain.data.decode_short_side) == (
        "pyav",
        "cpu",
        None,
    )
    assert train_dataset(plain).decoder.name == "pyav"
    with pytest.raises(
        ConfigError, match="command line: data.decoder=ffmpeg is not allowed: one of pyav, torchcodec"
    ):
        load_experiment(overrides=[f"data.train={manifest}", "data.decoder=ffmpeg"])
    with pytest.raises(ConfigError, match="data.decode_device=cuda.*data.decoder is torchcodec"):
        load_experiment(overrides=[f"data.train={manifest}", "data.decode_device=cuda"])
    with pytest.raises(ConfigError, match="data.workers=0"):
        load_experiment(
            overrides=[f"data.train={manifest}", "data.decoder=torchcodec", "data.decode_device=cuda"]
        )
    resized = load_experiment(overrides=[f"data.train={manifest}", "data.decode_short_side=32"])
    assert resized.training_hash() != plain.training_hash()  # other pixels: another training
    if MISSING is None:
        chosen = load_experiment(overrides=[f"data.train={manifest}", "data.decoder=torchcodec"])
        assert train_dataset(chosen).decoder.name == "torchcodec"
        assert chosen.training_hash() == plain.training_hash()  # the same frames: the same training


def test_missing_torchcodec_is_a_config_error_naming_the_extra(tmp_path):
    """A Python without torchcodec (its import made to fail, as it does when not installed) is
    refused at config time with the pip extra; a load failure of FFmpeg names the apt packages."""
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n")
    script = (
        "import sys; sys.modules['torchcodec'] = None\n"
        "from harness.config import load_experiment, ConfigError\n"
        f"try:\n    load_experiment(overrides=['data.train={manifest}', 'data.decoder=torchcodec'])\n"
        "except ConfigError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "command line: data.decoder=torchcodec is not allowed" in out.stdout, out.stderr
    assert "pip install 'rho-harness[torchcodec]'" in out.stdout
    try:
        import ctypes

        ctypes.CDLL("libavdevice.so.41")  # no such FFmpeg: the OSError a missing library gives
    except OSError as exc:
        message = torchcodec_problem(exc)
    assert "cannot load FFmpeg's shared libraries" in message and "apt-get install libavdevice59" in message


@needs_torchcodec
def test_torchcodec_in_dataloader_workers(tmp_path):
    """Forked DataLoader workers decode with torchcodec (imported in the parent by the config
    check) and give the items the training process gives."""
    from torch.utils.data import DataLoader

    entries = [VideoEntry(textured(tmp_path / f"v{i}.mp4", 30, 10), i) for i in range(2)]
    dataset = MultiClipDataset(entries, 2, 2, 3, seed=5, decoder=decoder("torchcodec"))
    (batch,) = DataLoader(dataset, batch_size=2, num_workers=1)
    for i in range(2):
        assert torch.equal(batch["clips"][i], dataset[i]["clips"])


@needs_torchcodec
def test_evaluation_views_decoded_by_torchcodec_are_the_pyav_views(tmp_path):
    """Evaluation decodes with ``data.decoder`` too (``ViewDataset``, the benchmarks and the kNN
    monitor): 2 temporal x 3 spatial test views of real mp4s are the same tensors with either
    backend, and a broken file is unreadable alike."""
    from harness.data.views import UNREADABLE, ViewDataset

    entries = [VideoEntry(textured(tmp_path / f"v{i}.mp4", 40 + 9 * i, 25, gop=10), i) for i in range(2)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(Path(entries[0].path).read_bytes()[:1500])
    entries.append(VideoEntry(broken, 0))
    options = dict(frames=4, stride=3, crop=48, short_side=56, temporal_views=2, spatial_views=3)
    backend = decoder("torchcodec")
    opened = []

    class Counting(type(backend)):  # the real backend, counting the files it opens
        def open(self, path, **kwargs):
            opened.append(Path(path).name)
            return super().open(path, **kwargs)

    pyav = ViewDataset(entries, **options)
    torchcodec = ViewDataset(entries, **options, decoder=Counting("cpu"))
    for index in range(2):
        a, b = pyav[index], torchcodec[index]
        assert a["clips"].shape == (6, 3, 4, 48, 48)
        assert torch.equal(a["clips"], b["clips"]), index
    assert UNREADABLE in pyav[2] and UNREADABLE in torchcodec[2]
    assert opened == ["v0.mp4", "v1.mp4", "broken.mp4"], "the views were decoded by the backend given"


@needs_torchcodec
def test_torchcodec_keeps_each_frame_index_and_a_rewritten_file_gets_a_new_one(tmp_path, monkeypatch):
    import harness.data.decode_torchcodec as tc

    monkeypatch.setattr(tc, "_INDEXES", type(tc._INDEXES)())
    monkeypatch.setattr(tc, "_INDEX_BYTES", [0])
    opened = []
    real_open = tc.open_video
    monkeypatch.setattr(tc, "open_video", lambda path: opened.append(path) or real_open(path))
    path = write_index_video(tmp_path / "v.mp4", 30)
    times = np.array([0.0, 1.3, 2.9])
    backend = decoder("torchcodec")

    def frames_at(p):
        video = backend.open(p)
        try:
            return [read_index(f) for f in video.at(times)[0]]
        finally:
            video.close()

    assert frames_at(path) == [0, 13, 29] and len(opened) == 1
    assert frames_at(path) == [0, 13, 29] and len(opened) == 1  # the index came from memory: no PyAV
    write_index_video(tmp_path / "other.mp4", 40)
    os.replace(tmp_path / "other.mp4", path)  # a new file under the same name: a new key
    assert frames_at(path) == [0, 13, 29] and len(opened) == 2
    assert frames_at(path.with_name("v.mp4")) == [0, 13, 29] and len(opened) == 2
    video = backend.open(path)
    assert video.info.num_frames == 40  # the new file's info, not the old one's
    video.close()


@needs_torchcodec
def test_torchcodec_index_cache_drops_the_least_recently_used_past_its_budget(tmp_path, monkeypatch):
    import harness.data.decode_torchcodec as tc

    monkeypatch.setattr(tc, "_INDEXES", type(tc._INDEXES)())
    monkeypatch.setattr(tc, "_INDEX_BYTES", [0])
    paths = [write_index_video(tmp_path / f"v{i}.mp4", 30) for i in range(3)]
    backend = decoder("torchcodec")
    backend.open(paths[0]).close()
    one = tc._INDEX_BYTES[0]
    monkeypatch.setattr(tc, "INDEX_CACHE_BYTES", 2 * one)  # room for two indexes of this size
    backend.open(paths[1]).close()
    backend.open(paths[0]).close()  # v0 is now the most recently used
    backend.open(paths[2]).close()  # over budget: v1 goes
    kept = [key[0] for key in tc._INDEXES]
    assert kept == [str(paths[0]), str(paths[2])] and tc._INDEX_BYTES[0] == 2 * one
