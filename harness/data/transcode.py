"""``rho data transcode``: re-encode a dataset once so that training decodes it cheaply.

Each video of a manifest is decoded with PyAV and written again as an mp4 (the ffmpeg command
line is not needed, and often not installed: PyAV carries FFmpeg's libraries): the short side
brought down to ``short_side`` (never up; even sizes, as 4:2:0 encoders need), a keyframe every
``gop`` frames (1: every frame is a keyframe, so any frame decodes on its own), no B-frames, a
constant frame rate (the source's average rate, or ``fps``), the display matrix applied to the
pixels (``decode.display_turn``: the copy is upright without side data) and no audio.

Why no B-frames: with them the decoder holds frames back for reordering, the container's index
gives decode times a frame or two before the presentation times (``decode._keyframe_indices``
then places keyframes early), and a frame needs a later one decoded first; without them decode
order is display order and a seek lands exactly. They cost some bytes at one CRF.
Why CRF 23 by default (x264's own): bits cost decode time. On Kinetics-like textured files
(``harness.speed.media.textured_videos``, 340x256 and 640x480, ρ = 2, T = 8, τ = 8) copies at
CRF 18 held 1.6-1.9x the bytes of CRF 23 ones and their items decoded 1.4-1.5x slower; at
CRF 23 a GOP-16 copy was 1.3x (340x256) and 3.9x (640x480, scaled to 256) faster than the
source. ``--crf 18`` ("visually lossless") keeps more of the source where that matters more.
Scene-cut keyframes are off, so GOPs are exactly ``gop``.

The output folder mirrors the input's paths relative to the manifest's folder, with an ``.mp4``
suffix (rows outside that folder go under ``_outside/`` by their absolute path). Each video is
written to a hidden temp file beside its final name, decoded again to verify its frame count
and duration, then renamed: a finished output is never partial, and a rerun skips the outputs
that exist (``transcode.json`` records the settings: a rerun with other settings is refused).
Bad inputs are skipped, counted and listed; the new manifest (same name, same labels and
columns, the bad rows left out) is written last, atomically, beside ``<name>.bad.txt``.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from harness.atomic import atomic_file, remove_stale_temp_files, temp_path
from harness.data.decode import (
    _TURNS,
    BadVideo,
    display_turn,
    frame_position,
    frame_rgb,
    open_video,
    probe,
    scaled_size,
)
from harness.data.manifest import CLASSES_FILE, VideoEntry, read_manifest, write_manifest
from harness.data.transcode_settings import TranscodeError, TranscodeSettings

STAMP = "transcode.json"
FRAME_SLACK = 2  # frames an output's count or duration may differ from what was expected


def trial_encode(settings: TranscodeSettings) -> None:
    """Encode two small frames in memory with ``settings``, so a bad option fails before any work."""
    with av.open(io.BytesIO(), mode="w", format="mp4") as output:
        encoder = output.add_stream(settings.codec, rate=25, options=_encoder_options(settings))
        encoder.width, encoder.height, encoder.pix_fmt = 64, 64, "yuv420p"
        encoder.codec_context.gop_size, encoder.codec_context.max_b_frames = settings.gop, 0
        for pts in range(2):
            picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            picture.pts = pts
            for packet in encoder.encode(picture):
                output.mux(packet)
        for packet in encoder.encode():
            output.mux(packet)


@dataclass(frozen=True)
class Outcome:
    """One manifest row's result: converted now, skipped (already done) or bad (``reason``)."""

    row: int
    status: str  # "converted", "kept" or "bad"
    reason: str = ""


@dataclass(frozen=True)
class TranscodeSummary:
    """What ``transcode_manifest`` did; ``bad`` lists (input path, reason)."""

    manifest: Path
    converted: int
    kept: int
    bad: list[tuple[str, str]]
    bad_list: Path | None


def output_names(entries: list[VideoEntry], root: Path) -> list[Path]:
    """Each row's output path relative to OUT: its path under ``root`` with an ``.mp4`` suffix
    (``a.avi`` and ``a.mp4`` side by side give ``a.avi.mp4`` and ``a.mp4``)."""
    folder = Path(os.path.abspath(root))
    relative = []
    for entry in entries:
        path = Path(os.path.abspath(entry.path))
        relative.append(
            path.relative_to(folder) if path.is_relative_to(folder) else Path("_outside", *path.parts[1:])
        )
    stems = [p.with_suffix(".mp4") for p in relative]
    taken: dict[Path, int] = {}
    for name in stems:
        taken[name] = taken.get(name, 0) + 1
    return [
        stem
        if taken[stem] == 1 or source.suffix.lower() == ".mp4"
        else source.with_name(source.name + ".mp4")
        for stem, source in zip(stems, relative, strict=True)
    ]


def _encoder_options(settings: TranscodeSettings) -> dict[str, str]:
    """Options of the encoder: CRF and preset for the x264/x265 family, no scene-cut keyframes."""
    if settings.codec in ("libx264", "libx265"):
        params = "scenecut=0" if settings.codec == "libx264" else "scenecut=0:bframes=0:log-level=error"
        key = "x264-params" if settings.codec == "libx264" else "x265-params"
        return {"crf": str(settings.crf), "preset": settings.preset, key: params, "bf": "0", "threads": "1"}
    return {"crf": str(settings.crf)}


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] - size[0] % 2, size[1] - size[1] % 2


def transcode_video(source: Path, target: Path, settings: TranscodeSettings) -> int:
    """Re-encode ``source`` as ``target`` (through a temp file beside it); returns its frame count.

    Frames are placed on a constant-rate grid: each output time gets the frame shown then (the
    last one starting no later than half a source frame after it), as ``decode_times`` maps times.

    Raises:
        BadVideo: the source cannot be opened or decoded, ends more than ``FRAME_SLACK`` frames
            short of its header, or the written file does not decode to what was written.
    """
    container = open_video(source)
    tmp = temp_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = probe(container, source)
        stream = container.streams.video[0]
        time_base, origin = stream.time_base or Fraction(1, 1), stream.start_time or 0
        out_fps = (
            Fraction(settings.fps).limit_denominator(1001)
            if settings.fps
            else (stream.average_rate or Fraction(info.fps).limit_denominator(1001))
        )
        rate = float(out_fps)
        half = 0.5 * rate / info.fps  # half a source frame, in output frames
        expected = max(1, round(info.duration * rate))
        written, turn, size = 0, None, None
        with av.open(str(tmp), mode="w", format="mp4") as output:
            encoder = None

            def emit(frame: av.VideoFrame) -> None:
                nonlocal written
                image = turn(frame_rgb(frame, size))
                image = image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2]
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                picture.pts = written
                for packet in encoder.encode(picture):
                    output.mux(packet)
                written += 1

            previous, previous_end = None, 0.0
            try:
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    start = frame_position(frame, origin, time_base, info.fps) * rate / info.fps
                    if encoder is None:
                        turn = _TURNS[display_turn(frame)]
                        width, height = frame.width, frame.height
                        scaled = scaled_size(width, height, settings.short_side)
                        size = _even(scaled) if scaled != (width, height) else None
                        shown = turn(np.zeros((*(size or (width, height))[::-1], 1), np.uint8)).shape
                        encoder = output.add_stream(
                            settings.codec, rate=out_fps, options=_encoder_options(settings)
                        )
                        encoder.height, encoder.width = shown[0] - shown[0] % 2, shown[1] - shown[1] % 2
                        encoder.pix_fmt = "yuv420p"
                        encoder.codec_context.gop_size = settings.gop
                        encoder.codec_context.max_b_frames = 0
                        encoder.codec_context.thread_count = 1
                    while previous is not None and start > written + half:
                        emit(previous)  # the output time falls before this frame: the previous one shows
                    if previous is None:
                        while start > written + half:
                            emit(frame)  # a late first frame also fills the times before it
                    previous = frame
                    length = float(frame.duration * time_base) * rate if frame.duration else rate / info.fps
                    previous_end = start + length
            except (av.FFmpegError, OSError, ValueError):
                raise BadVideo(
                    f"{source}: truncated (the decoder failed part-way through the file)"
                ) from None
            if previous is None:
                raise BadVideo(f"{source}: truncated (no frame could be decoded)")
            while written < previous_end - 0.5:
                emit(previous)
            for packet in encoder.encode():
                output.mux(packet)
        if written < expected - FRAME_SLACK:
            raise BadVideo(
                f"{source}: truncated (its header promises {info.duration:.2f} s, {expected} frames at "
                f"{rate:g} fps; the stream ends after {written})"
            )
        _verify(tmp, written, rate, target)
        os.replace(tmp, target)
        remove_stale_temp_files(target)
        return written
    finally:
        container.close()
        tmp.unlink(missing_ok=True)


def _verify(path: Path, written: int, fps: float, name: Path) -> None:
    """Decode the new file: as many frames as were written, no audio, the header's length agreeing."""
    try:
        with av.open(str(path), mode="r", format="mp4") as container:
            info = probe(container, name)
            decoded = sum(1 for _ in container.decode(container.streams.video[0]))
            streams = len(container.streams)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise BadVideo(f"{name}: the written copy does not decode ({type(exc).__name__}: {exc})") from None
    if (
        abs(decoded - written) > FRAME_SLACK
        or abs(info.duration * fps - written) > FRAME_SLACK
        or streams != 1
    ):
        raise BadVideo(
            f"{name}: the written copy decodes to {decoded} frames ({info.duration:.2f} s, {streams} "
            f"streams), {written} were written"
        )


def _transcode_task(task: tuple[int, Path, Path, TranscodeSettings]) -> Outcome:
    """One row (runs in a worker process): kept when its output exists, else converted or bad."""
    row, source, target, settings = task
    if target.is_file():
        return Outcome(row, "kept")
    try:
        transcode_video(source, target, settings)
        return Outcome(row, "converted")
    except BadVideo as exc:
        return Outcome(row, "bad", str(exc).removeprefix(f"{source}: "))


def check_folders(manifest: Path, out: Path, entries: list[VideoEntry], targets: list[Path]) -> None:
    """Refuse an OUT that is the manifest's folder or where an output would overwrite an input."""
    if os.path.realpath(out) == os.path.realpath(manifest.parent):
        raise TranscodeError(
            f"OUT {out} is the folder of {manifest}: the copies would replace the originals; "
            "give a new folder, e.g. {}".format(manifest.parent.with_name(manifest.parent.name + "_256"))
        )
    sources = {os.path.realpath(e.path) for e in entries}
    clash = next((t for t in targets if os.path.realpath(t) in sources), None)
    if clash is not None:
        raise TranscodeError(
            f"OUT {out}: the copy {clash} would overwrite an input video; give a folder apart from the data"
        )


def _check_stamp(out: Path, settings: TranscodeSettings) -> None:
    """Refuse to resume an OUT written with other settings; record ours before any work."""
    stamp = out / STAMP
    wanted = {"settings": asdict(settings)}
    if stamp.is_file():
        try:
            found = json.loads(stamp.read_text())
        except (OSError, ValueError):
            found = None
        if found != wanted:
            raise TranscodeError(
                f"{out} holds a transcode with other settings ({stamp}: {found}); rerun with those, give "
                "another OUT, or delete the folder"
            )
        return
    with atomic_file(stamp) as handle:
        handle.write(json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def default_workers() -> int:
    """min(usable CPUs, 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def transcode_manifest(
    manifest: str | Path,
    out: str | Path,
    settings: TranscodeSettings | None = None,
    workers: int = 1,
    progress: Callable[[int, int, int], None] | None = None,
) -> TranscodeSummary:
    """Re-encode every video of ``manifest`` under ``out`` and write ``out/<manifest name>``.

    Args:
        manifest: the input manifest (rows outside its folder are accepted).
        out: the new dataset's folder (not the manifest's folder).
        settings: how to re-encode (checked before anything is written).
        workers: processes (a forked pool above 1).
        progress: called with (rows done, rows in all, bad so far) after each row.

    Returns:
        The summary; the new manifest lists the good rows, ``<stem>.bad.txt`` the bad ones.

    Raises:
        TranscodeError or ManifestError: bad options, folders or manifest, before any work.
    """
    manifest, out = Path(manifest), Path(out)
    settings = settings or TranscodeSettings()
    settings.check()
    if workers < 1:
        raise TranscodeError(f"--workers {workers}: use 1 or more processes")
    entries = read_manifest(manifest, check_files=False)
    names = output_names(entries, manifest.parent)
    targets = [out / name for name in names]
    check_folders(manifest, out, entries, targets)
    out.mkdir(parents=True, exist_ok=True)
    _check_stamp(out, settings)
    tasks = [(row, e.path, t, settings) for row, (e, t) in enumerate(zip(entries, targets, strict=True))]
    outcomes: list[Outcome] = []

    def collect(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if progress:
            progress(len(outcomes), len(tasks), sum(o.status == "bad" for o in outcomes))

    if workers == 1:
        for task in tasks:
            collect(_transcode_task(task))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for future in as_completed([pool.submit(_transcode_task, task) for task in tasks]):
                collect(future.result())
    by_row = {o.row: o for o in outcomes}
    rows, bad = [], []
    for row, (entry, name) in enumerate(zip(entries, names, strict=True)):
        outcome = by_row[row]
        if outcome.status == "bad":
            bad.append((str(entry.path), outcome.reason))
            continue
        rows.append({"path": name.as_posix(), "label": entry.label, **entry.extra})
    new_manifest = out / manifest.name
    bad_list = out / f"{manifest.stem}.bad.txt"
    if bad:
        with atomic_file(bad_list) as handle:
            handle.writelines(f"{path}\t{reason}\n" for path, reason in bad)
    else:
        bad_list.unlink(missing_ok=True)
    if rows:
        write_manifest(new_manifest, rows)
    classes = manifest.parent / CLASSES_FILE
    if classes.is_file() and not (out / CLASSES_FILE).exists():
        shutil.copyfile(classes, out / CLASSES_FILE)  # the label check reads it beside the manifest
    converted = sum(o.status == "converted" for o in outcomes)
    kept = sum(o.status == "kept" for o in outcomes)
    return TranscodeSummary(new_manifest if rows else Path(), converted, kept, bad, bad_list if bad else None)


__all__ = [
    "STAMP",
    "TranscodeError",
    "TranscodeSettings",
    "TranscodeSummary",
    "default_workers",
    "transcode_manifest",
    "transcode_video",
]
