"""Data, sampling and augmentation against facebookresearch/SlowFast (docs/fidelity.md, that section).

Each reference here is written from SlowFast's published code (``slowfast/datasets/decoder.py``,
``transform.py``, ``utils.py``), independently of our code path, and run on the same inputs:
what the table calls "same" is checked number for number (or, for random draws, distribution
for distribution), and what it offers as a switch is checked to give SlowFast's numbers when on.
"""

import math
import random
from itertools import permutations

import numpy as np
import pytest
import torch

from harness.config import AugmentConfig, load_experiment
from harness.data.clip_starts import clip_gaps, clip_order, clip_starts, gap_clip_starts
from harness.data.dataset import MultiClipDataset
from harness.data.manifest import write_manifest
from harness.data.transforms import MEAN, STD, TrainClipTransform
from tests.videos import read_index, write_index_video

# ---------------------------------------------------------------------------------------------
# References, from SlowFast's code


def slowfast_clip_size(frames: int, stride: int, fps: float, target_fps: float = 30) -> float:
    """decoder.py:305-308 / 552-555 (torchvision backend): a clip's size in the video's own frames."""
    return max(1.0, stride * frames / target_fps * fps)


def slowfast_frame_indices(start: float, frames: int, stride: int, fps: float) -> np.ndarray:
    """decoder.py:17-34 ``temporal_sampling`` over [start, start + clip_size − 1] (decoder.py:74, 139, 597)."""
    end = start + slowfast_clip_size(frames, stride, fps) - 1
    return torch.linspace(start, end, frames).long().numpy()


def slowfast_multiple_start_end(video_size, clip_sizes, min_delta, max_delta, rand: random.Random):
    """decoder.py:79-183 ``get_multiple_start_end_idx`` for random sampling (clip_idx = −1)."""

    def sample_clips():
        se_inds, dt = np.empty((0, 2)), np.empty(0)
        for clip_size in clip_sizes:
            for i_try in range(100):
                start = rand.uniform(0, max(video_size - clip_size, 0))
                new = np.append(se_inds, [[start, start + clip_size - 1]], axis=0)
                if se_inds.shape[0] < 1:
                    se_inds = new
                    break
                new = np.sort(new, 0)
                dt = new[1:, 0] - new[:-1, 1]
                if (any(dt < min_delta) or any(dt > max_delta)) and i_try < 99:
                    continue
                se_inds = new
                break
        return se_inds, dt

    goodness, final = -math.inf, None
    for _ in range(100):
        se_inds, dt = sample_clips()
        if not (any(dt < min_delta) or any(dt > max_delta)):
            return se_inds, dt
        score = np.r_[dt[dt < min_delta], -dt[dt > max_delta]].sum()
        if goodness < score:
            final, goodness = (se_inds, dt), score
    return final


def slowfast_clip_positions(num_clips: int, rng: np.random.Generator) -> np.ndarray:
    """decoder.py:499-504 and 600-611: output position j holds the time-sorted clip i with ind_clips[i] = j.

    Returns, for each output position, the time rank of the clip it holds.
    """
    ind_clips = rng.permutation(num_clips)
    held = np.empty(num_clips, np.int64)
    for i, j in enumerate(ind_clips):
        held[j] = i
    return held


# ---------------------------------------------------------------------------------------------
# Clip order (point 5)


def test_shuffled_clip_order_is_distributed_as_slowfasts_temporally_rnd_clips():
    """Every ordering of ρ = 3 time-sorted clips is equally likely in both (6 orders, 6000 draws)."""
    draws = 6000
    ours_rng, ref_rng = np.random.default_rng(1), np.random.default_rng(2)
    ours = [tuple(clip_order(3, "shuffled", ours_rng)) for _ in range(draws)]
    ref = [tuple(slowfast_clip_positions(3, ref_rng)) for _ in range(draws)]
    for order in permutations(range(3)):
        share_ours, share_ref = ours.count(order) / draws, ref.count(order) / draws
        assert abs(share_ours - 1 / 6) < 0.02 and abs(share_ref - 1 / 6) < 0.02
        assert abs(share_ours - share_ref) < 0.03
    assert (clip_order(4, "time", ours_rng) == np.arange(4)).all()
    assert (clip_order(1, "shuffled", ours_rng) == [0]).all()  # one clip: nothing to shuffle (num_decode 1)


def test_shuffled_items_are_the_time_ordered_items_permuted(index_manifest):
    """Same seed, epoch and row: the shuffled item holds the time-ordered item's clips (frames and
    starts) in a permutation drawn from the item's generator, the same on every read; over items
    the earliest clip sits first about half the time (ρ = 2), never always."""
    kwargs = dict(clips=2, frames=3, stride=2, seed=5)
    timed = MultiClipDataset(index_manifest, clip_order="time", **kwargs)
    shuffled = MultiClipDataset(index_manifest, clip_order="shuffled", **kwargs)
    earliest_first = 0
    for epoch in range(20):
        for row in range(len(timed)):
            a, b = timed[epoch, row], shuffled[epoch, row]
            order = [int(torch.nonzero(a["starts"] == s)[0]) for s in b["starts"]]
            assert sorted(order) == [0, 1]
            torch.testing.assert_close(b["clips"], a["clips"][order], rtol=0, atol=0)
            torch.testing.assert_close(shuffled[epoch, row]["clips"], b["clips"], rtol=0, atol=0)
            assert (torch.diff(a["starts"]) >= 0).all()
            earliest_first += int(b["starts"][0] <= b["starts"][1])
    assert 10 <= earliest_first <= 30  # of 40 items (≥ 20 expected, ties count as first)


# ---------------------------------------------------------------------------------------------
# t_max: SlowFast's gap (point 6)

# Kinetics numbers: a 10 s video at 30 fps (300 frames), Slow 8x8 clips. SlowFast's clip is
# T·τ = 64 frames there (decoder.py:306), first to last frame 63: our span at stride 9 (fps 30).
VIDEO, CLIP, SPAN = 300, 64, 64


@pytest.mark.parametrize(
    "clips, min_delta, max_delta",
    [(2, -math.inf, 15), (2, 0, 30), (2, 10, 60), (4, -math.inf, 15), (4, -20, 0)],
)
def test_gap_bounds_hold_as_in_slowfasts_sampler(clips, min_delta, max_delta):
    """The gaps (last frame of a clip to the first of the next in time) of ρ clips lie in the
    bounds for both samplers, and their distribution matches (means within 4 standard errors,
    the extremes reached by both). Bounds that 4 clips can barely meet in 300 frames (a gap of at
    least 10) make both fall back to draws that miss them, SlowFast after up to 10⁴ redraws: not
    tested here."""
    rand, rng = random.Random(0), np.random.default_rng(0)
    low = None if min_delta == -math.inf else min_delta
    ref = np.stack(
        [
            slowfast_multiple_start_end(VIDEO, [CLIP] * clips, min_delta, max_delta, rand)[1]
            for _ in range(1500)
        ]
    )
    ours = np.stack(
        [clip_gaps(gap_clip_starts(VIDEO, clips, SPAN, low, max_delta, rng), SPAN) for _ in range(1500)]
    )
    assert ours.shape == ref.shape == (1500, clips - 1)
    for gaps in (ref, ours):
        assert gaps.max() <= max_delta and gaps.min() >= max(min_delta, -(CLIP - 1))
    standard_error = math.sqrt((ours.var() + ref.var()) / ours.size)
    assert abs(ours.mean() - ref.mean()) < 4 * standard_error + 0.5  # + 0.5: integer vs float starts
    assert ours.max() >= max_delta - 1 and ref.max() >= max_delta - 1
    if low is not None:
        assert ours.min() <= low + 1 and ref.min() <= low + 1


def test_gap_bounds_each_consecutive_pair_not_the_whole_spread():
    """ρ = 4 with a 30-frame gap bound spreads starts up to 3 × (30 + 63) frames apart, as SlowFast's
    per-clip check allows; our start-to-start t_max of 30 frames never exceeds 30."""
    rand, rng = random.Random(1), np.random.default_rng(1)
    ref = np.stack(
        [slowfast_multiple_start_end(VIDEO, [CLIP] * 4, -math.inf, 30, rand)[0][:, 0] for _ in range(500)]
    )
    ours = np.stack([gap_clip_starts(VIDEO, 4, SPAN, None, 30, rng) for _ in range(500)])
    for starts in (ref, ours):
        spread = starts.max(1) - starts.min(1)
        assert spread.max() > 2 * (30 + SPAN - 1) and spread.max() <= 3 * (30 + SPAN - 1)
    windowed = np.stack([clip_starts(VIDEO, 4, SPAN, 30, rng) for _ in range(500)])
    assert (windowed.max(1) - windowed.min(1)).max() <= 30


def test_gap_mode_in_the_dataset_bounds_the_gap_in_seconds(tmp_path):
    """data.t_max_mode gap, t_max 1 s, t_min 0.2 s on a real 30 fps video of 10 s at stride 9: the
    gap (s) from one clip's last frame to the next clip's first lies in [0.2, 1] for every item,
    i.e. DELTA_CLIPS_MIN/MAX of 6 and 30 frames."""
    video = write_index_video(tmp_path / "v.mp4", 300, fps=30, size=32, gop=30)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(video), "label": 0}])
    dataset = MultiClipDataset(manifest, 3, 8, 9, t_max=1.0, fps=30, t_max_mode="gap", t_min=0.2, seed=3)
    for epoch in range(12):
        starts = np.sort(dataset[epoch, 0]["starts"].numpy())
        gaps = starts[1:] - (starts[:-1] + 63 / 30)
        assert (gaps >= 0.2 - 1e-4).all() and (gaps <= 1.0 + 1e-4).all()


def test_gap_keys_are_checked_before_any_compute():
    with pytest.raises(Exception, match="data.t_min"):
        load_experiment(overrides=["data.t_min=0.5"], check_files=False)
    with pytest.raises(Exception, match="data.t_min"):
        load_experiment(overrides=["data.t_max_mode=gap", "data.t_max=1", "data.t_min=2"], check_files=False)
    with pytest.raises(Exception, match="data.t_max_mode"):
        load_experiment(overrides=["data.t_max_mode=gaps"], check_files=False)
    with pytest.raises(Exception, match="data.clip_order"):
        load_experiment(overrides=["data.clip_order=random"], check_files=False)
    ok = load_experiment(
        overrides=["data.t_max_mode=gap", "data.t_min=-0.5", "data.clip_order=shuffled"], check_files=False
    )
    assert (ok.data.t_max_mode, ok.data.t_min, ok.data.clip_order) == ("gap", -0.5, "shuffled")


# ---------------------------------------------------------------------------------------------
# Frame sampling: TARGET_FPS 30, SAMPLING_RATE 8 (point 8)


def test_global_starts_cover_what_slowfasts_do():
    """Global sampling: SlowFast's start is uniform on [0, video − clip size] (decoder.py:123-126);
    ours on the same range of grid frames at stride 9, fps 30 (same mean, same ends)."""
    rand, rng = random.Random(2), np.random.default_rng(2)
    ref = np.array([rand.uniform(0, VIDEO - CLIP) for _ in range(20000)])
    ours = np.stack([clip_starts(VIDEO, 1, SPAN, None, rng) for _ in range(20000)]).ravel()
    assert ours.min() == 0 and ours.max() == VIDEO - SPAN == round(ref.max())
    assert abs(ours.mean() - ref.mean()) < 2.0


def _clip_indices(item) -> list[list[int]]:
    return [[read_index(frame.numpy()) for frame in clip.unbind(1)] for clip in item["clips"]]


def test_slowfast_frames_of_a_30fps_video_are_ours_at_fps_30_stride_9(tmp_path):
    """SlowFast's 8x8 clip (torchvision backend) takes native frames s, s+9, …, s+63 of a 30 fps
    video (linspace over 64 frames). ``data.fps 30, data.stride 9`` decodes exactly those frames;
    the plain ``stride 8`` takes s, s+8, …, s+56 (0.27 s steps, not SlowFast's 0.3 s)."""
    video = write_index_video(tmp_path / "v30.mp4", 150, fps=30, size=32, gop=15)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(video), "label": 0}])
    for epoch in range(4):
        item = MultiClipDataset(manifest, 2, 8, 9, fps=30, seed=epoch)[0]
        for clip, start in zip(_clip_indices(item), item["starts"].tolist(), strict=True):
            assert clip == slowfast_frame_indices(round(start * 30), 8, 8, 30).tolist()
        item = MultiClipDataset(manifest, 2, 8, 8, fps=None, seed=epoch)[0]
        for clip, start in zip(_clip_indices(item), item["starts"].tolist(), strict=True):
            s = round(start * 30)
            assert clip == list(range(s, s + 57, 8)) != slowfast_frame_indices(s, 8, 8, 30).tolist()


def test_slowfast_frames_of_a_25fps_video_are_ours_at_fps_30_stride_9_within_a_frame(tmp_path):
    """On a 25 fps video SlowFast's clip is 53.3 native frames (clip size scales by fps / TARGET_FPS)
    and its frames floor(s + 7.48 k); ours at fps 30, stride 9 are the frames shown at s/25 + 0.3 k:
    within one frame of SlowFast's, the same 2.1 s extent."""
    video = write_index_video(tmp_path / "v25.mp4", 125, fps=25, size=32, gop=25)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(video), "label": 0}])
    for epoch in range(4):
        item = MultiClipDataset(manifest, 2, 8, 9, fps=30, seed=epoch)[0]
        for clip, start in zip(_clip_indices(item), item["starts"].tolist(), strict=True):
            ref = slowfast_frame_indices(start * 25, 8, 8, 25)
            assert np.abs(np.array(clip) - ref).max() <= 1
            assert abs((clip[-1] - clip[0]) - (ref[-1] - ref[0])) <= 1


# ---------------------------------------------------------------------------------------------
# Augmentation parameters that are the same


def test_random_resized_crop_box_is_slowfasts_on_the_same_draws():
    """transform.py:477-516 ``_get_param_spatial_crop`` (log-uniform aspect, 10 tries, central
    fallback) on the very uniforms our crop drew: the same box, for SlowFast's scale/aspect."""
    augment = AugmentConfig(crop_scale=[0.2, 0.766], aspect=[0.75, 1.3333])
    ours = TrainClipTransform(224, augment)
    height, width = 256, 341
    for seed in range(200):
        torch.manual_seed(seed)
        box = ours._crop_box(height, width)
        torch.manual_seed(seed)  # replay the same draws into SlowFast's formula
        log_ratio = torch.log(torch.tensor([0.75, 1.3333]))
        for _ in range(10):
            target_area = torch.empty(1).uniform_(0.2, 0.766).item() * height * width
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, (1,)))  # random.randint(0, height - h): inclusive
                j = int(torch.randint(0, width - w + 1, (1,)))
                break
        assert box == (i, j, h, w)


def test_normalisation_is_slowfasts():
    """utils.py ``tensor_normalize`` with DATA.MEAN [0.45]*3, DATA.STD [0.225]*3 on x / 255."""
    frames = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    ref = (frames.float() / 255.0 - 0.45) / 0.225
    ours = (frames.float() / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(ours, ref)
    augment = AugmentConfig(crop_scale=[1.0, 1.0], aspect=[1.0, 1.0], flip=0.0, color_p=0.0, grayscale_p=0.0)
    out = TrainClipTransform(8, augment)(frames)  # full-frame crop at the same size: only normalisation
    torch.testing.assert_close(out, ref.permute(3, 0, 1, 2), atol=1e-5, rtol=0)


def test_flip_after_the_crop_is_slowfasts():
    """utils.py:175-176 / transform.py:152-173: after the crop, ``images.flip(-1)`` with p 0.5."""
    frames = torch.randint(0, 256, (2, 12, 12, 3), dtype=torch.uint8)
    base = dict(crop_scale=[1.0, 1.0], aspect=[1.0, 1.0], color_p=0.0, grayscale_p=0.0)
    kept = TrainClipTransform(12, AugmentConfig(flip=0.0, **base))(frames)
    flipped = TrainClipTransform(12, AugmentConfig(flip=1.0, **base))(frames)
    torch.testing.assert_close(flipped, kept.flip(-1), rtol=0, atol=0)
    half = TrainClipTransform(12, AugmentConfig(flip=0.5, **base))
    torch.manual_seed(0)
    share = sum(bool(torch.equal(half(frames), flipped)) for _ in range(400)) / 400
    assert 0.42 < share < 0.58


def test_a_clip_past_the_end_repeats_the_last_frame_as_slowfasts_clamp(index_videos, tmp_path):
    """decoder.py:31-32 clamps sampled indices to the last frame; ours repeats the last frame: on
    the 12-frame index video an 8 x 2 clip (15 frames) is frames 0, 2, …, 10, 11, 11 in both."""
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(index_videos["short"]), "label": 0}])
    item = MultiClipDataset(manifest, 2, 8, 2)[0]
    ref = torch.clamp(torch.linspace(0, 14, 8), 0, 11).long().tolist()
    assert _clip_indices(item) == [ref, ref] and item["padded"] == 4


def _smooth_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """A uint8 clip of smooth colour gradients, brighter downwards, in 20..210 (no clamping under mild jitter)."""
    y = torch.linspace(0, 1, height).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1, 1)
    t = torch.arange(frames).view(-1, 1, 1, 1) / frames
    phase = torch.tensor([0.0, 2.0, 4.0]).view(1, 1, 1, 3)
    value = 0.2 + 0.5 * y + 0.12 * torch.sin(3 * x + 2 * y + phase + t)  # brighter downwards
    return (value * 255).round().to(torch.uint8)


def _ours(augment: AugmentConfig, frames: torch.Tensor, box, crop: int, jitter=None, sigma=None):
    """Our clip for fixed draws: crop ``box`` (top, left, h, w), no flip, the given jitter or blur."""
    transform = TrainClipTransform(crop, augment)
    row = transform.draw(frames.shape[1], frames.shape[2], frames)
    row[0:4] = torch.tensor(box, dtype=torch.float32)
    row[4] = row[5] = row[14] = row[15] = 0.0
    if jitter is not None:  # (brightness, contrast) in that order, saturation and hue off
        row[5], row[6:10] = 1.0, torch.tensor([0.0, 1.0, 2.0, 3.0])
        row[10:14] = torch.tensor([jitter[0], jitter[1], math.nan, math.nan])
    if sigma is not None:
        row[15] = 1.0
        scale = (crop / box[3], crop / box[2]) if augment.colour_frame == "frame" else (1.0, 1.0)
        row[16], row[17] = sigma * scale[0], sigma * scale[1]
    mean, std = torch.tensor(MEAN).view(3, 1, 1, 1), torch.tensor(STD).view(3, 1, 1, 1)
    return transform.apply(frames, row) * std + mean  # [3, T, crop, crop] in [0, 1]


def _slowfast_then_crop(video: torch.Tensor, box, crop: int) -> torch.Tensor:
    """SlowFast's order: the colour steps already applied to the whole float clip [T, 3, H, W],
    then the random resized crop (kinetics.py:378-387, then :420-435)."""
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = box
    out = TF.resized_crop(video, top, left, h, w, [crop, crop], antialias=True)
    return out.permute(1, 0, 2, 3)


def test_colour_on_the_whole_frame_is_slowfasts_jitter_before_the_crop():
    """``data.augment.colour_frame: frame``: brightness then contrast on the crop equal SlowFast's
    brightness then contrast of the whole clip (PIL's contrast blends towards the whole stacked
    clip's mean luma) followed by the crop, to uint8 rounding; our default (each crop frame's own
    mean) does not, on a crop much brighter than the clip."""
    frames = _smooth_clip(4, 96, 128)
    box, crop, (bright, contrast) = (50, 60, 40, 60), 32, (1.15, 0.6)
    video = frames.permute(0, 3, 1, 2).float() / 255.0
    luma = (video * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    whole_mean = luma.mean() * bright  # the stacked clip's mean after the brightness step
    reference = _slowfast_then_crop(contrast * (video * bright) + (1 - contrast) * whole_mean, box, crop)
    frame = _ours(AugmentConfig(colour_frame="frame"), frames, box, crop, jitter=(bright, contrast))
    ours_default = _ours(AugmentConfig(), frames, box, crop, jitter=(bright, contrast))
    assert (frame - reference).abs().max() < 3 / 255
    assert (ours_default - reference).abs().max() > 10 / 255, "the crop's own mean differs"


def test_blur_sigma_in_frame_pixels_is_slowfasts_blur_before_the_crop():
    """The blur's sigma (0.1-2.0) is drawn in decoded-frame pixels by SlowFast, before the crop:
    with ``colour_frame: frame`` ours blurs the resized crop with sigma x crop / box per axis,
    which matches blurring the frame and then cropping far better than the default (sigma in
    crop pixels)."""
    from torchvision.transforms.v2 import functional as TF

    generator = torch.Generator().manual_seed(3)
    noise = torch.rand(2, 3, 24, 32, generator=generator)  # detail that the blur must remove
    frames = (TF.resize(noise, [192, 256], antialias=True) * 200 + 25).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 1).contiguous()
    box, crop, sigma = (32, 40, 128, 96), 64, 2.0  # the crop shrinks by 2 down, 1.5 across
    video = frames.permute(0, 3, 1, 2).float() / 255.0
    reference = _slowfast_then_crop(TF.gaussian_blur(video, [13, 13], [sigma, sigma]), box, crop)
    frame = _ours(AugmentConfig(colour_frame="frame"), frames, box, crop, sigma=sigma)
    default = _ours(AugmentConfig(), frames, box, crop, sigma=sigma)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # away from the padded borders
    error_frame = (frame - reference)[inner].abs().mean()
    error_default = (default - reference)[inner].abs().mean()
    assert error_frame < 0.5 * error_default and error_frame < 2 / 255, (error_frame, error_default)
