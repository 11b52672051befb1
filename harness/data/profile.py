"""``rho data profile``: what a dataset's encoding costs training, measured, and whether to transcode.

Over a seeded sample spread across the manifest, each video's stream is read without decoding:
codec, size, frame rate, duration, bytes per second, the GOP (the median spacing of the demuxed
packets' keyframe flags) and B-frames (a packet presented before one demuxed earlier: the decoder
reorders). Then one training item of the config (ρ clips of T frames at stride τ, as
``MultiClipDataset`` decodes them, without augmentation) is timed on each video.

The recommendation comes from a measurement, not a rule: a couple of the sampled videos are
transcoded (``harness.data.transcode``) into a temp folder at a few candidate settings (short
side 256 where the videos are larger; GOP T×τ, 8 and 1), the same items are timed on the copies,
and the fastest candidate is recommended with its measured speed-up and disk ratio when it is at
least ``WORTH_IT`` times faster; otherwise the data is fine as it is.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

from harness.config import DataConfig
from harness.data.dataset import MultiClipDataset, sampling_options
from harness.data.decode import BadVideo, open_video, probe
from harness.data.manifest import VideoEntry
from harness.data.transcode import TranscodeSettings, transcode_video

WORTH_IT = 1.3  # the least measured speed-up of items worth a transcode
COMPARED = 2  # sampled videos transcoded at each candidate setting


@dataclass
class StreamStats:
    """One sampled video: its stream as demuxed, and the measured cost of one training item."""

    path: str
    codec: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    duration: float = 0.0
    gop: int = 0  # median keyframe spacing in packets; the packet count when there is one keyframe
    b_frames: bool = False
    bytes_per_s: float = 0.0
    item_ms: float = 0.0
    error: str = ""


@dataclass
class Candidate:
    """A transcode setting tried on ``COMPARED`` videos: measured item speed-up and disk ratio."""

    short_side: int | None
    gop: int
    speedup: float
    disk: float

    @property
    def options(self) -> str:
        """The ``rho data transcode`` options that make it."""
        return f"--short-side {self.short_side or 0} --gop {self.gop}"


@dataclass
class Profile:
    """``profile_manifest``'s answer."""

    videos: list[StreamStats]
    clips: int
    frames: int
    stride: int
    candidates: list[Candidate] = field(default_factory=list)
    compared: int = 0  # videos the candidates were measured on
    recommendation: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self), "candidates": [{**asdict(c), "options": c.options} for c in self.candidates]}


def sample_rows(count: int, sample: int, seed: int = 0) -> list[int]:
    """``sample`` row indices spread over ``count`` rows: one drawn at random from each of
    ``sample`` equal stretches (all rows when there are no more than ``sample``)."""
    if count <= sample:
        return list(range(count))
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, count, sample + 1).astype(int)
    return [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def stream_stats(path: str | Path) -> StreamStats:
    """Codec, size, rate, duration and bytes/s of the first video stream, and its GOP and
    B-frames measured from the demuxed packets (no decoding)."""
    stats = StreamStats(str(path))
    try:
        container = open_video(path)
        try:
            info = probe(container, path)
            stream = container.streams.video[0]
            keyframes, count, latest_pts = [], 0, None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the flush packet
                if packet.is_keyframe:
                    keyframes.append(count)
                if packet.pts is not None:
                    if latest_pts is not None and packet.pts < latest_pts:
                        stats.b_frames = True  # shown before a packet demuxed earlier: reordered
                    latest_pts = packet.pts if latest_pts is None else max(latest_pts, packet.pts)
                count += 1
            stats.codec = stream.codec_context.name
            stats.b_frames = stats.b_frames or bool(stream.codec_context.has_b_frames)
        finally:
            container.close()
    except (BadVideo, av.FFmpegError, OSError) as exc:
        stats.error = str(exc).removeprefix(f"{path}: ")
        return stats
    stats.width, stats.height, stats.fps, stats.duration = info.width, info.height, info.fps, info.duration
    spacings = np.diff(keyframes)
    stats.gop = int(statistics.median(spacings)) if len(spacings) else count
    stats.bytes_per_s = os.path.getsize(path) / max(info.duration, 1e-9)
    return stats


def item_dataset(entries: list[VideoEntry], data: DataConfig, seed: int = 0) -> MultiClipDataset:
    """The training dataset of ``data`` over ``entries``, without augmentation (only decoding)."""
    return MultiClipDataset(
        entries, data.clips, data.frames, data.stride, transform=None, seed=seed, **sampling_options(data)
    )


def timed_items(datasets: list[MultiClipDataset], repeats: int = 3, rounds: int = 3) -> list[list[float]]:
    """Seconds to decode ``repeats`` items (different clip starts) of each row of each dataset:
    ``[dataset][row]`` the mean over the items, each the fastest of ``rounds`` timings. The
    datasets take turns item by item, so a stall of a busy machine hits them alike."""
    best = [[[math.inf] * repeats for _ in range(len(d))] for d in datasets]
    for _ in range(rounds):
        for row in range(len(datasets[0])):
            for epoch in range(repeats):
                for number, dataset in enumerate(datasets):
                    started = time.perf_counter()
                    dataset[(epoch, row)]
                    elapsed = time.perf_counter() - started
                    best[number][row][epoch] = min(best[number][row][epoch], elapsed)
    return [[statistics.mean(items) for items in rows] for rows in best]


def candidate_settings(videos: list[StreamStats], data: DataConfig) -> list[TranscodeSettings]:
    """Short side 256 where the videos are larger (else kept), with GOP T×τ, 8 and 1."""
    short = 256 if any(min(v.width, v.height) > 256 for v in videos) else None
    gops = sorted({max(1, data.frames * data.stride), 8, 1}, reverse=True)
    return [TranscodeSettings(short_side=short, gop=gop) for gop in gops]


def measure_candidates(
    entries: list[VideoEntry], videos: list[StreamStats], data: DataConfig, repeats: int, seed: int
) -> list[Candidate]:
    """Transcode ``entries`` at each candidate setting into a temp folder and time the same items
    on the copies and the sources, taking turns (``timed_items``)."""
    settings = candidate_settings(videos, data)
    size_before = sum(os.path.getsize(e.path) for e in entries)
    with tempfile.TemporaryDirectory(prefix="rho-profile-") as tmp:
        variants = [entries]
        for number, setting in enumerate(settings):
            copies = []
            for index, entry in enumerate(entries):
                target = Path(tmp) / f"{number}" / f"{index}.mp4"
                transcode_video(entry.path, target, setting)
                copies.append(VideoEntry(target, entry.label, entry.extra))
            variants.append(copies)
        costs = [sum(rows) for rows in timed_items([item_dataset(v, data, seed) for v in variants], repeats)]
        sizes = [sum(os.path.getsize(c.path) for c in copies) for copies in variants[1:]]
    return [
        Candidate(setting.short_side, setting.gop, costs[0] / max(cost, 1e-9), size / size_before)
        for setting, cost, size in zip(settings, costs[1:], sizes, strict=True)
    ]


def recommend(candidates: list[Candidate], compared: int = COMPARED) -> str:
    """The fastest candidate when it is ``WORTH_IT`` times faster (of those within 10% of it, the
    smallest on disk), else that the data is fine as is."""
    if not candidates:
        return "no video could be measured: nothing to recommend"
    best = max(c.speedup for c in candidates)
    if best < WORTH_IT:
        return (
            f"the data is fine as is: no transcode tried made items at least {WORTH_IT}x faster "
            f"(best {best:.2f}x)"
        )
    pick = min((c for c in candidates if c.speedup >= 0.9 * best), key=lambda c: c.disk)
    return (
        f"transcode with `rho data transcode MANIFEST OUT {pick.options}`: ~{pick.speedup:.1f}x faster "
        f"items, ~{pick.disk:.2f}x the disk (measured on {compared} sampled videos)"
    )


def profile_manifest(
    entries: list[VideoEntry],
    data: DataConfig,
    sample: int = 16,
    seed: int = 0,
    repeats: int = 3,
    candidates: bool = True,
) -> Profile:
    """Profile a seeded sample of ``entries`` at ``data``'s ρ, T and τ (see the module's docstring)."""
    chosen = [entries[i] for i in sample_rows(len(entries), sample, seed)]
    videos = [stream_stats(e.path) for e in chosen]
    good = [(e, v) for e, v in zip(chosen, videos, strict=True) if not v.error]
    costs = timed_items([item_dataset([e for e, _ in good], data, seed)], repeats)[0] if good else []
    for (_, stats), cost in zip(good, costs, strict=True):
        stats.item_ms = 1000 * cost
    profile = Profile(videos, data.clips, data.frames, data.stride)
    if candidates and good:
        compared = good[:COMPARED]
        profile.compared = len(compared)
        profile.candidates = measure_candidates(
            [e for e, _ in compared], [v for _, v in compared], data, repeats, seed
        )
        profile.recommendation = recommend(profile.candidates, len(compared))
    return profile


def format_profile(profile: Profile) -> str:
    """The profile as aligned text: one line a video, the candidates, the recommendation."""
    header = ("video", "codec", "size", "fps", "GOP", "B", "seconds", "kB/s", "item ms")
    rows = []
    for v in profile.videos:
        name = Path(v.path).name
        if v.error:
            rows.append((name, "BAD", v.error, "", "", "", "", "", ""))
            continue
        rows.append(
            (
                name,
                v.codec,
                f"{v.width}x{v.height}",
                f"{v.fps:.3g}",
                str(v.gop),
                "yes" if v.b_frames else "no",
                f"{v.duration:.1f}",
                f"{v.bytes_per_s / 1000:.0f}",
                f"{v.item_ms:.1f}",
            )
        )
    lines = _aligned([header, *rows])
    good = [v for v in profile.videos if not v.error]
    if good:
        lines.append(
            f"one item (rho={profile.clips} clips, T={profile.frames}, stride={profile.stride}, no augmentation): "
            f"{statistics.mean(v.item_ms for v in good):.1f} ms on average over {len(good)} videos"
        )
    if profile.candidates:
        lines.append("")
        lines.append(f"transcoded copies of {profile.compared} sampled videos, the same items timed:")
        table = [("options", "items faster", "disk")]
        table += [(c.options, f"{c.speedup:.2f}x", f"{c.disk:.2f}x") for c in profile.candidates]
        lines.extend(_aligned(table))
    if profile.recommendation:
        lines.append("")
        lines.append(profile.recommendation)
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
