"""The synthetic dataset: real, decodable mp4 files, deterministic, cached, with a real class
signal and nuisances that drift over time (or, in the control, do not)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from harness.data.manifest import read_manifest
from harness.data.synth import (
    SynthSpec,
    class_names,
    cue_segments,
    dataset_stamp,
    draw_plan,
    frame_times,
    interpolate,
    nuisance_tracks,
    object_coordinates,
    pixel_grid,
    render,
    synthesize,
)

TINY = SynthSpec(train_videos=4, val_videos=2, classes=2, duration=1.0, fps=8, size=32)


def decode(path: Path) -> np.ndarray:
    """All frames of a video as float RGB in [0, 1], [T, H, W, 3]."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames).astype(np.float32) / 255


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """One tiny dataset shared by the read-only tests."""
    out = tmp_path_factory.mktemp("tiny")
    return out, synthesize(out, TINY)


def test_videos_decode_with_the_right_frames_rate_and_size(tiny):
    _, manifests = tiny
    for entry in read_manifest(manifests["train"]) + read_manifest(manifests["val"]):
        with av.open(str(entry.path)) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == Fraction(TINY.fps)
            assert (stream.width, stream.height) == (TINY.size, TINY.size)
            assert stream.codec_context.name == "h264"
            times = [frame.time for frame in container.decode(video=0)]
        assert times == pytest.approx([i / TINY.fps for i in range(TINY.frames)])


def test_manifests_list_balanced_labels_with_relative_paths(tiny):
    out, manifests = tiny
    names = (out / "classes.txt").read_text().split()
    assert names == class_names(TINY.classes) == ["disk", "square"]
    for split, count in (("train", TINY.train_videos), ("val", TINY.val_videos)):
        lines = manifests[split].read_text().splitlines()
        assert lines[0] == "path,label,class_name"
        rows = [line.split(",") for line in lines[1:]]
        assert len(rows) == count
        assert all(
            not Path(path).is_absolute() and path.startswith(f"videos/{split}/") for path, _, _ in rows
        )
        assert all(names[int(label)] == name for _, label, name in rows)
        assert sorted(int(label) for _, label, _ in rows) == sorted(i % TINY.classes for i in range(count))
    assert json.loads((out / "spec.json").read_text())["spec"]["seed"] == TINY.seed


def test_same_seed_gives_the_same_bytes_whatever_the_workers(tiny, tmp_path):
    out, _ = tiny
    synthesize(tmp_path / "again", TINY, workers=2)
    assert file_hashes(tmp_path / "again") == file_hashes(out)
    synthesize(tmp_path / "other", replace(TINY, seed=1))
    videos = {k: v for k, v in file_hashes(out).items() if k.endswith(".mp4")}
    other_videos = set(file_hashes(tmp_path / "other").values())
    assert not set(videos.values()) & other_videos


def test_a_finished_dataset_is_reused_and_an_interrupted_one_remade(tmp_path):
    calls: list[tuple[int, int]] = []
    manifests = synthesize(tmp_path, TINY, progress=lambda done, total: calls.append((done, total)))
    total = TINY.train_videos + TINY.val_videos
    assert calls[-1] == (total, total) and len(calls) == total
    mtimes = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}

    calls.clear()
    assert synthesize(tmp_path, TINY, progress=lambda done, total: calls.append((done, total))) == manifests
    assert calls == []
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == mtimes

    (tmp_path / "spec.json").unlink()  # what a run killed before its last write leaves behind
    synthesize(tmp_path, TINY, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == total and (tmp_path / "spec.json").is_file()

    calls.clear()
    next(tmp_path.glob("videos/val/*/*.mp4")).unlink()
    synthesize(tmp_path, TINY, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == total


def test_class_is_recoverable_from_the_decoded_pixels(tmp_path):
    """Nearest-centroid on the object-aligned foreground of each decoded video finds its class.

    The generator supplies only the object's pose (to align pixels into the object's frame);
    the class comes from the manifest. Shuffled labels must fall to chance: the check would
    fail if labels and pictures were unrelated.
    """
    spec = SynthSpec(train_videos=32, val_videos=1, classes=8, duration=1.0, fps=8, size=48, seed=3)
    entries = read_manifest(synthesize(tmp_path, spec)["train"])
    edges = np.linspace(-1.2, 1.2, 9)
    features = []
    for entry in entries:
        luminance = decode(entry.path).mean(axis=-1)
        foreground = np.abs(luminance - np.median(luminance, axis=(1, 2), keepdims=True))
        index = int(entry.path.stem.split("_")[-1])
        tracks = nuisance_tracks(draw_plan(spec, "train", index), frame_times(spec))
        ox, oy = (c.ravel() for c in object_coordinates(tracks, pixel_grid(spec.size)))
        summed = np.histogram2d(ox, oy, bins=(edges, edges), weights=foreground.ravel())[0]
        counted = np.histogram2d(ox, oy, bins=(edges, edges))[0]
        feature = (summed / np.maximum(counted, 1)).ravel()
        features.append((feature - feature.mean()) / feature.std())
    features_array, labels = np.array(features), np.array([entry.label for entry in entries])

    def leave_one_out_accuracy(labels: np.ndarray) -> float:
        hits = 0
        for i in range(len(labels)):
            rest = np.arange(len(labels)) != i
            centroids = {
                c: features_array[rest & (labels == c)].mean(axis=0) for c in np.unique(labels[rest])
            }
            guess = min(centroids, key=lambda c: np.sum((features_array[i] - centroids[c]) ** 2))
            hits += guess == labels[i]
        return hits / len(labels)

    assert leave_one_out_accuracy(labels) >= 0.75  # chance is 1/8
    assert leave_one_out_accuracy(np.random.default_rng(0).permutation(labels)) <= 0.35


def frame_differences(out: Path, spec: SynthSpec) -> tuple[float, float]:
    """Mean absolute difference of frames 2 apart and of frames 1 s apart, over the train videos."""
    near, far = [], []
    for entry in read_manifest(synthesize(out, spec)["train"]):
        frames = decode(entry.path)
        near.append(np.abs(frames[2:] - frames[:-2]).mean())
        far.append(np.abs(frames[spec.fps :] - frames[: -spec.fps]).mean())
    return float(np.mean(near)), float(np.mean(far))


def test_nuisances_drift_over_seconds_but_not_in_the_control(tmp_path):
    spec = SynthSpec(
        train_videos=6, val_videos=1, classes=2, duration=4.0, fps=8, size=32, cue="none"
    )  # nuisances alone: the flicker has its own tests
    near, far = frame_differences(tmp_path / "drift", spec)
    assert far > 2 * near
    _, control_far = frame_differences(tmp_path / "control", replace(spec, constant_nuisance=True))
    assert control_far < 0.25 * far


def test_the_control_freezes_the_same_draws_at_the_first_keyframe():
    spec = SynthSpec(constant_nuisance=True)
    drifting, frozen = draw_plan(SynthSpec(), "train", 5), draw_plan(spec, "train", 5)
    assert frozen.label == drifting.label
    for name, values in drifting.keyframes.items():
        np.testing.assert_array_equal(frozen.keyframes[name], np.repeat(values[:1], len(values), axis=0))


def test_drift_moves_each_keyframe_part_way_to_its_fresh_draw():
    fresh = draw_plan(SynthSpec(), "train", 5).keyframes
    frozen = draw_plan(SynthSpec(drift=0.0), "train", 5).keyframes
    half = draw_plan(SynthSpec(drift=0.5), "train", 5).keyframes
    for name, values in fresh.items():
        np.testing.assert_array_equal(frozen[name], np.repeat(values[:1], len(values), axis=0))
        np.testing.assert_array_equal(half[name][0], values[0])  # the same video at time 0
        for k in range(1, len(values)):
            np.testing.assert_allclose(half[name][k], (half[name][k - 1] + values[k]) / 2, rtol=1e-12)
    assert (
        np.abs(np.diff(half["position"], axis=0)).mean() < np.abs(np.diff(fresh["position"], axis=0)).mean()
    )


def test_interpolation_passes_through_keyframes_and_rests_there():
    key_times = np.array([0.0, 1.0, 2.5])
    values = np.array([[0.0], [4.0], [-2.0]])
    np.testing.assert_allclose(interpolate(key_times, values, key_times), values)
    near_key = interpolate(key_times, values, np.array([0.98, 1.0, 1.02]))[:, 0]
    assert np.abs(near_key - 4.0).max() < 1e-3  # flat at a keyframe: a short clip sees a nearly fixed value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 33),
        ("classes", 1),
        ("classes", 33),
        ("duration", 0.0),
        ("train_videos", 0),
        ("seed", -1),
        ("drift", 1.5),
        ("cue", "stripes"),
        ("cue_interval", 0.0),
        ("cue_strength", 0.0),
    ],
)
def test_a_bad_spec_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SynthSpec(**{field: value})


def test_the_object_not_the_background_carries_the_contrast():
    """The design that lets ρ = 2 learn: a large object on a soft grating (docs/findings.md).

    The object covers about an eighth of the frame on average (0.06 before FORMAT_VERSION 2), and
    the grating's two colours lie much closer to each other than to the object's colour (their
    distance was 0.44 of the object's step in median, and above it in a tenth of the draws).
    """
    from harness.data.synth import _object_layer

    spec = SynthSpec(duration=1.0, fps=4, size=48)
    areas, ratios = [], []
    for index in range(200):
        plan = draw_plan(spec, "train", index)
        low, high = plan.keyframes["background_colours"][:, :3], plan.keyframes["background_colours"][:, 3:]
        step = np.linalg.norm(plan.keyframes["object_colour"] - (low + high) / 2, axis=1)
        ratios.extend(np.linalg.norm(high - low, axis=1) / step)
        if index < 24:
            tracks = nuisance_tracks(plan, frame_times(spec))
            coverage, _ = _object_layer(plan.label, tracks, pixel_grid(spec.size), spec.size)
            areas.append((coverage > 0.5).mean())
    assert 0.09 < np.mean(areas) < 0.3
    assert np.median(ratios) < 0.2 and np.percentile(ratios, 90) < 0.5


# ---------------------------------------------------------------------------------------------
# The per-instance cue (issue 18's feature-suppression probe).

CUE_SPEC = SynthSpec(train_videos=8, val_videos=1, duration=2.0, fps=8, size=32, cue_interval=0.5)


def test_without_a_cue_the_frames_and_the_stamp_are_those_of_before():
    """cue none is format 2's data (the demo's before issue 18): per-frame channel sums recorded
    before the cue code existed (sha256 of the uint8 frames then: 01970ae2...)."""
    spec = SynthSpec(train_videos=2, val_videos=1, duration=1.0, fps=4, size=16, cue="none")
    frames = render(draw_plan(spec, "train", 1), spec)
    sums = frames.reshape(frames.shape[0], -1, 3).sum(axis=1, dtype=np.int64)
    before = [[23726, 30928, 22786], [22329, 28889, 21764], [16264, 20610, 16879], [8612, 11506, 9999]]
    assert np.abs(sums - np.array(before)).max() <= 3  # a float rounding's pixel or so, not a change
    assert draw_plan(spec, "train", 1).cue is None
    explicit = replace(spec, cue="none", cue_interval=2.0)
    assert np.array_equal(render(draw_plan(explicit, "train", 1), explicit), frames)
    assert dataset_stamp(spec)["spec"]["cue"] == "none" and dataset_stamp(spec)["format_version"] == 3
    assert dataset_stamp(replace(spec, cue="grating"))["spec"]["cue"] == "grating"
    assert SynthSpec().cue == "flicker", "the default (the demo's) dataset carries the flicker"


def cue_layer(spec: SynthSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Luminance of the rendered frames with the cue minus without it, [T, H, W], and the frames' segments."""
    plan, plain = draw_plan(spec, "train", index), draw_plan(replace(spec, cue="none"), "train", index)
    luma = np.array([0.299, 0.587, 0.114])
    with_cue, without = render(plan, spec) @ luma, render(plain, spec) @ luma
    return (with_cue - without) / 255, cue_segments(plan.cue, frame_times(spec))


def dominant_grating(image: np.ndarray) -> tuple[float, float]:
    """Orientation (degrees, mod 180) and cycles per frame of the strongest grating in ``image``.

    The peak of the Hann-windowed spectrum, zero-padded 8-fold to read it between bins.
    """
    n, pad = image.shape[0], 8
    window = np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fft2((image - image.mean()) * window, s=(pad * n, pad * n)))
    ky, kx = np.fft.fftfreq(pad * n, 1 / n), np.fft.fftfreq(pad * n, 1 / n)
    power[np.hypot(*np.meshgrid(ky, kx, indexing="ij")) < 1.5] = 0  # DC, the window's leakage
    iy, ix = np.unravel_index(np.argmax(power), power.shape)
    return float(np.degrees(np.arctan2(ky[iy], kx[ix])) % 180), float(np.hypot(ky[iy], kx[ix]))


def same_grating(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Within 6 degrees and 0.4 cycles: one grating read twice."""
    turn = abs(a[0] - b[0]) % 180
    return min(turn, 180 - turn) < 6 and abs(a[1] - b[1]) < 0.4


def test_the_grating_cue_is_per_video_shared_within_a_segment_and_redrawn_between():
    """Measured on rendered frames: the dominant grating's orientation and frequency (FFT peak)."""
    changed, pairs, firsts = 0, 0, []
    for index in range(6):
        layer, segments = cue_layer(replace(CUE_SPEC, cue="grating"), index)
        assert np.abs(layer).max() > 0.1, "a high-contrast cue"
        gratings = [dominant_grating(frame) for frame in layer]
        starts = []
        for segment in np.unique(segments):
            found = [g for g, s in zip(gratings, segments, strict=True) if s == segment]
            assert all(same_grating(found[0], g) for g in found), f"video {index} segment {segment}: {found}"
            starts.append(found[0])
        changed += sum(not same_grating(a, b) for a, b in zip(starts, starts[1:], strict=False))
        pairs += len(starts) - 1
        firsts.append(starts[0])
    assert changed >= 0.8 * pairs, "neighbouring segments show another grating"
    assert sum(not same_grating(a, b) for a, b in zip(firsts, firsts[1:], strict=False)) >= 4, "videos differ"


def test_the_grating_cue_survives_grayscale_and_colour_jitter():
    """It is luminance structure: jittered and greyed frames keep the same dominant grating."""
    import torch
    from torchvision.transforms.v2 import functional as F

    from harness.data.transforms import colour_jitter

    spec = replace(CUE_SPEC, cue="grating")
    plan = draw_plan(spec, "train", 2)
    frames = torch.from_numpy(render(plan, spec)).permute(0, 3, 1, 2).float() / 255
    layer, _ = cue_layer(spec, 2)
    params = {
        "fn_idx": torch.tensor([3, 0, 2, 1]),
        "brightness_factor": 1.4,
        "contrast_factor": 0.6,
        "saturation_factor": 0.3,
        "hue_factor": 0.2,
    }
    for view in (colour_jitter(frames, params), F.rgb_to_grayscale_image(frames, num_output_channels=3)):
        for cue, original, changed in zip(layer, frames, view, strict=True):
            grey = [F.rgb_to_grayscale_image(x)[0].numpy() for x in (original, changed)]
            assert same_grating(dominant_grating(cue), dominant_grating(grey[0])), (
                "the cue dominates the frame"
            )
            assert same_grating(dominant_grating(grey[0]), dominant_grating(grey[1]))


def test_the_flicker_cue_sets_each_segments_luminance_rhythm():
    """Frame luminance over the cue-free frames' follows 1 + depth sin(2 pi rate t + phase), one
    (depth, rate, phase) per segment, and those differ between segments and videos."""
    spec = replace(CUE_SPEC, cue="flicker", fps=16)
    times = frame_times(spec)
    rates = []
    for index in range(3):
        plan = draw_plan(spec, "train", index)
        plain = render(draw_plan(replace(spec, cue="none"), "train", index), spec).astype(float)
        flicker = render(plan, spec).astype(float)
        unclipped = (plain > 10) & (plain < 130)  # 130 x 1.875 stays below 255
        gain = np.array(
            [(f[m].sum() / p[m].sum()) for f, p, m in zip(flicker, plain, unclipped, strict=True)]
        )
        depth, rate, phase = plan.cue.params[cue_segments(plan.cue, times)].T
        assert np.allclose(gain, 1 + depth * np.sin(2 * np.pi * rate * times + phase), atol=0.02)
        assert gain.max() - gain.min() > 0.2
        rates.append(plan.cue.params[:, 1])
    assert all(len(set(np.round(r, 3))) == len(r) for r in rates), "each segment draws its own rate"
    assert not np.allclose(rates[0], rates[1])


def test_cue_strength_scales_the_flicker_depth_and_the_grating_amplitude():
    """The flicker's luminance swing and the grating's amplitude grow with cue_strength; the rest of
    the video (and the cue's rates and phases) are the same draws; the default leaves spec.json as
    before, and a flicker deep enough to black the frame out is refused."""
    spec = replace(CUE_SPEC, cue="flicker", fps=16)
    times = frame_times(spec)
    plain = render(draw_plan(replace(spec, cue="none"), "train", 0), spec).astype(float)
    unclipped = (plain > 10) & (plain < 120)
    swings = {}
    for strength in (0.25, 0.5, 1.0):
        plan = draw_plan(replace(spec, cue_strength=strength), "train", 0)
        frames = render(plan, replace(spec, cue_strength=strength)).astype(float)
        gain = np.array([(f[m].sum() / p[m].sum()) for f, p, m in zip(frames, plain, unclipped, strict=True)])
        depth, rate, phase = plan.cue.params[cue_segments(plan.cue, times)].T
        assert np.allclose(gain, 1 + depth * np.sin(2 * np.pi * rate * times + phase), atol=0.02)
        swings[strength] = (gain - 1, plan.cue.params)
    base_gain, base = swings[0.5]
    for strength in (0.25, 1.0):
        gain, params = swings[strength]
        assert np.allclose(params[:, 0], base[:, 0] * strength / 0.5)
        assert np.array_equal(params[:, 1:], base[:, 1:])
        assert np.allclose(gain, base_gain * strength / 0.5, atol=0.03)
    grating = [cue_layer(replace(CUE_SPEC, cue="grating", cue_strength=s), 1)[0] for s in (1.0, 0.5)]
    assert np.abs(grating[1] - grating[0] * 0.5).mean() < 0.01 and np.abs(grating[0]).max() > 0.1
    assert dataset_stamp(replace(spec, cue_strength=0.5))["spec"]["cue_strength"] == 0.5
    with pytest.raises(ValueError, match="cue_strength"):
        SynthSpec(cue="flicker", cue_strength=1.2)
    assert SynthSpec(cue="grating", cue_strength=3.0).cue_strength == 3.0


def test_the_blob_cue_is_a_still_constellation_per_segment():
    """Dots that stay put within a segment and move (or change number) between segments."""
    for index in range(3):
        layer, segments = cue_layer(replace(CUE_SPEC, cue="blobs"), index)
        marks = np.abs(layer) > 0.15
        for segment in np.unique(segments):
            frames = marks[segments == segment]
            assert frames[0].any() and (frames == frames[0]).mean() > 0.97
        starts = [marks[segments == s][0] for s in np.unique(segments)]
        assert all((a != b).mean() > 0.01 for a, b in zip(starts, starts[1:], strict=False))


def test_a_cue_leaves_the_video_and_the_control_freezes_it():
    """The cue has its own random stream: the same plan as without it; the control freezes it too."""
    spec = replace(CUE_SPEC, cue="grating")
    with_cue, without = draw_plan(spec, "train", 3), draw_plan(replace(spec, cue="none"), "train", 3)
    assert with_cue.label == without.label and with_cue.distractors == without.distractors
    assert all(np.array_equal(with_cue.keyframes[k], without.keyframes[k]) for k in without.keyframes)
    frozen = draw_plan(replace(spec, constant_nuisance=True), "train", 3).cue.params
    first = np.repeat(with_cue.cue.params[:1], len(frozen), axis=0)
    assert np.array_equal(frozen[:, :3], first[:, :3]) and not frozen[:, 3].any(), "no drift in the control"
    assert with_cue.cue.params[:, 3].any()
    control = replace(CUE_SPEC, cue="flicker", fps=16, constant_nuisance=True)
    assert not draw_plan(control, "train", 3).cue.params[:, 1].any(), "no flicker rate in the control"
    flicker = render(draw_plan(control, "train", 3), control).astype(float)
    plain = render(draw_plan(replace(control, cue="none"), "train", 3), control).astype(float)
    unclipped = (plain > 10) & (plain < 130)  # 130 x 1.875 stays below 255
    gain = np.array([(f[m].sum() / p[m].sum()) for f, p, m in zip(flicker, plain, unclipped, strict=True)])
    assert gain.std() < 0.005, "the control's luminance gain is the same in every frame"
    assert not np.array_equal(with_cue.cue.params[0], draw_plan(spec, "train", 4).cue.params[0])


def test_rho_data_synth_takes_the_cue(tmp_path, capsys):
    """``rho data synth --cue`` writes the cue into spec.json; an unknown cue is refused before compute."""
    from harness.cli import main

    tiny = ["--train", "2", "--val", "1", "--classes", "2", "--duration", "1", "--fps", "4", "--size", "16"]
    assert (
        main(["data", "synth", str(tmp_path / "cue"), *tiny, "--cue", "flicker", "--cue-interval", "0.25"])
        == 0
    )
    stamp = json.loads((tmp_path / "cue" / "spec.json").read_text())["spec"]
    assert stamp["cue"] == "flicker" and stamp["cue_interval"] == 0.25 and stamp["cue_strength"] == 1.0
    assert (
        main(["data", "synth", str(tmp_path / "weak"), *tiny, "--cue", "flicker", "--cue-strength", "0.5"])
        == 0
    )
    assert json.loads((tmp_path / "weak" / "spec.json").read_text())["spec"]["cue_strength"] == 0.5
    with pytest.raises(SystemExit):
        main(["data", "synth", str(tmp_path / "bad"), *tiny, "--cue", "stripes"])
    assert "invalid choice: 'stripes'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_synth_commands_defaults_are_the_specs():
    """`rho data synth OUT` with no options makes the default (the demo's) dataset: the parser's
    defaults, written out for its help, cannot drift from SynthSpec's."""
    from harness.cli import build_parser
    from harness.cli.data import synth_spec

    assert synth_spec(build_parser().parse_args(["data", "synth", "out"])) == SynthSpec()
