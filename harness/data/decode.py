"""Decode exactly the frames an item needs from a video file, with one container open.

The requested times are served in order: frames between two requested frames are decoded
forward (never converted to RGB) or skipped by a seek to the keyframe before the next one,
chosen from the container's keyframe index. On short-GOP and all-intra streams (what ``rho data
transcode`` writes) a seek is taken wherever that keyframe lies a few frames past what was
decoded, so a clip costs little more than its own frames; on long GOPs (x264's 250, most
downloaded video) only gaps over a second with a keyframe after what was decoded are sought
(a seek to an earlier keyframe would decode those frames again). ``seek_threshold`` sets that
gap rule for every stream. Decoding stops at the last requested frame, so a short clip never
costs a whole long video.

A time maps to the frame shown then, by presentation timestamps: the last frame that starts
no later than half a frame (of the stream's average rate) after it. On a constant-rate stream
that is the nearest frame, ``round(t × fps)`` (NumPy's rounding, ties to even); on a variable
frame rate it follows the real timestamps, so uneven gaps give neither duplicated nor dropped
frames beyond what the requested rate implies. Times past the end of the stream (the last
frame's timestamp plus its duration) get the last frame (the "repeat last" policy for videos
shorter than a clip); the number of such times is reported.

Frames are turned as players show them: a display matrix (phone videos: 90/180/270° and
flips) is applied as ffmpeg's ``autorotate`` does, unless ``autorotate=False``. With
``short_side``, frames are scaled in the RGB conversion (one swscale pass, bilinear) so that
their short side is at most that many pixels, rather than converted at full size and resized.

Backends (``data.decoder``): this module is the PyAV one (``PyAVDecoder``) and defines the
interface, ``Decoder.open(path) -> OpenVideo`` whose ``at(times)`` is ``decode_times``'
contract; ``harness.data.decode_torchcodec`` is the torchcodec one. ``decoder(name)`` picks one:
a built-in name (``harness.config.DECODERS``) or a class that an installed distribution adds
through the entry-point group ``rho.decoders`` (docs/extending.md).
"""

from __future__ import annotations

import inspect
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from harness import plugins
from harness.config import DECODER_ENTRY_POINT_GROUP, DECODERS
from harness.data.clip_starts import ClipTiming, grid_length
from harness.data.manifest import VideoEntry

_local = threading.local()
_inherited: list[threading.local] = []  # a forked child's copies of the parent's reformatters, never used


def _forget_reformatters() -> None:
    """After a fork, start with fresh reformatters: the parent's swscale contexts are not the child's to use."""
    global _local
    _inherited.append(_local)  # kept, not freed: freeing them in the child is as unsafe as using them
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_reformatters)


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side brought down to ``short_side`` (never up; None: unchanged).

    The long side as torchvision's ``resize(video, [short_side])`` computes it (truncated), so
    a frame scaled in the decoder has the shape a decode-then-resize pipeline gives.
    """
    short, long = min(width, height), max(width, height)
    if short_side is None or short <= short_side:
        return width, height
    scaled_long = int(short_side * long / short)
    return (short_side, scaled_long) if width <= height else (scaled_long, short_side)


def frame_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [H, W, 3] (scaled to ``size`` = (width, height) in the same swscale pass, bilinear);
    one reformatter per thread keeps its swscale context (≈10× faster than a fresh one per frame).

    One swscale thread: parallelism comes from DataLoader workers, and swscale's own thread
    pool costs far more than it saves on small frames (64×64: 6 µs a frame with one thread,
    up to 1 ms with the automatic pool on a busy machine).
    """
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    if size is None or size == (frame.width, frame.height):
        return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
    width, height = size
    return reformatter.reformat(
        frame, width, height, format="rgb24", interpolation="BILINEAR", threads=1
    ).to_ndarray()


Orient = Callable[[np.ndarray], np.ndarray]


def _unturned(image: np.ndarray) -> np.ndarray:
    """The stored frame, for streams without a display matrix (or ``autorotate=False``)."""
    return image


_TURNS: dict[str, Orient] = {
    "none": _unturned,
    "rotate 90 clockwise": lambda a: np.rot90(a, -1),  # ffmpeg transpose=clock
    "rotate 90 counter-clockwise": lambda a: np.rot90(a, 1),  # transpose=cclock
    "transpose": lambda a: a.swapaxes(0, 1),  # transpose=cclock_flip
    "anti-transpose": lambda a: np.rot90(a, -1)[::-1],  # transpose=clock_flip
    "rotate 180": lambda a: a[::-1, ::-1],
    "horizontal flip": lambda a: a[:, ::-1],
    "vertical flip": lambda a: a[::-1],
}


def display_matrix(frame: av.VideoFrame) -> bytes | None:
    """The frame's display matrix (nine int32 in 16.16 fixed point), or None when it has none.

    PyAV changed ``frame.side_data`` in 18.1.1: up to 18.1.0 it is a sequence of side-data
    objects, each with a ``type``; from 18.1.1 a mapping from ``Type`` to side data. Both are read.
    """
    kind = av.sidedata.sidedata.Type.DISPLAYMATRIX
    side_data = frame.side_data
    if isinstance(side_data, Mapping):
        data = side_data.get(kind)
        return None if data is None else bytes(data)
    return next((bytes(d) for d in side_data if d.type == kind), None)


def display_turn(frame: av.VideoFrame) -> str:
    """What ffmpeg's autorotate does to this frame, from its display matrix: a key of ``_TURNS``.

    The same decision as fftools (``get_rotation`` and the transpose/hflip/vflip choice), so
    frames match ``ffmpeg -i``; angles that are not a multiple of 90° are left unturned.
    """
    matrix = display_matrix(frame)
    if matrix is None:
        return "none"
    m = np.frombuffer(matrix, dtype=np.int32).astype(np.float64) / 65536
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return "none"
    theta = round(math.degrees(math.atan2(m[1] / scale1, m[0] / scale0)))  # -av_display_rotation_get
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return "transpose" if m[3] > 0 else "rotate 90 clockwise"
    if abs(theta - 180) < 1:
        flips = (m[0] < 0, m[4] < 0)
        return {
            (True, True): "rotate 180",
            (True, False): "horizontal flip",
            (False, True): "vertical flip",
        }.get(flips, "none")
    if abs(theta - 270) < 1:
        return "anti-transpose" if m[3] < 0 else "rotate 90 counter-clockwise"
    if abs(theta) < 1 and m[4] < 0:
        return "vertical flip"
    return "none"


def read_turn(container: av.container.InputContainer) -> str:
    """The display turn of the first video stream (``display_turn`` of its first frame); rewinds to the start."""
    stream = container.streams.video[0]
    container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
    turn = "none"
    for frame in container.decode(stream):
        turn = display_turn(frame)
        break
    container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
    return turn


ON_GRID = 0.1  # frames: timestamps this close to the average rate's grid count as on it (time-base rounding)


def frame_position(frame: av.VideoFrame, origin: int, time_base: Fraction, fps: float) -> float:
    """Where a frame starts, in frames of the average rate; snapped to the grid when within ``ON_GRID``."""
    position = float((frame.pts - origin) * time_base) * fps
    return float(round(position)) if abs(position - round(position)) <= ON_GRID else position


def shown_by(position: np.ndarray | float, slot: float) -> np.ndarray | bool:
    """Whether a frame starting at ``position`` has started by the time at ``slot`` (both in frames).

    On the grid the nearest frame counts (``round``, ties to even, as before variable frame
    rates were handled); off it, a frame starting up to half a frame after the time does.
    """
    position = np.asarray(position)
    on_grid = position == np.round(position)
    return np.where(on_grid, position <= np.round(slot), position <= slot + 0.5)


def frame_length(frame: av.VideoFrame, time_base: Fraction, fps: float) -> float:
    """A frame's duration in frames of the average rate (1 where the stream does not say)."""
    if not frame.duration:
        return 1.0
    length = float(frame.duration * time_base) * fps
    return float(round(length)) if abs(length - round(length)) <= ON_GRID else length


class BadVideo(RuntimeError):
    """A file that cannot be used; the message is ``<path>: <kind> (<detail>)`` with kind one of
    "missing", "empty", "not a video" or "truncated", in words a user acts on (no FFmpeg errno)."""


def unopenable(path: str | Path) -> BadVideo:
    """Why FFmpeg could not open ``path``: missing, empty (0 bytes), truncated (it starts as an
    MP4/MOV, whose index an interrupted write or copy leaves out) or not a video."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return BadVideo(f"{path}: missing (no such file, or it cannot be read)")
    if not head:
        return BadVideo(f"{path}: empty (0 bytes)")
    if head[4:8] == b"ftyp":
        return BadVideo(
            f"{path}: truncated (an MP4/MOV without its index: cut short while written or copied)"
        )
    return BadVideo(f"{path}: not a video (no container FFmpeg can read)")


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs to know before decoding."""

    fps: float
    num_frames: int
    width: int
    height: int
    end: float | None = None  # where the last frame ends (s), when the header's length overshoots it

    @property
    def duration(self) -> float:
        """Seconds of video: the last frame's end where the header says more, else the header's frames / fps."""
        return self.end if self.end is not None else self.num_frames / self.fps


def open_video(path: str | Path) -> av.container.InputContainer:
    """Open a container; any FFmpeg or OS failure becomes ``BadVideo`` naming the file."""
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError):
        raise unopenable(path) from None
    if not container.streams.video:
        container.close()
        raise BadVideo(f"{path}: not a video (no video stream: audio-only or empty container)")
    # One decoding thread: DataLoader workers give the parallelism, and a per-open thread pool
    # costs more than it saves on short reads (H.264 from x264 has one slice per frame anyway).
    container.streams.video[0].thread_type = "NONE"
    container.streams.video[0].codec_context.thread_count = 1
    return container


def probe(container: av.container.InputContainer, path: str | Path = "") -> VideoInfo:
    """Frame rate and frame count of the first video stream, from the container's header.

    Where the header's length (frames / average rate) overshoots the end of the last frame
    (a variable-rate mp4 whose first frame is long says 0.16 s more than its frames last),
    the frame count is cut to what fits and ``end`` holds that end (``stream_end``), so clips
    are not placed past the last frame. Constant-rate files keep the header's numbers.
    """
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise BadVideo(f"{path}: not a video (its video stream has no frame rate)")
    fps = float(rate)
    num_frames = stream.frames
    if num_frames <= 0:
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            seconds = 0.0
        num_frames = int(round(seconds * fps))
    if num_frames <= 0:
        raise BadVideo(f"{path}: empty (its video stream has no frames)")
    info = VideoInfo(
        fps=fps, num_frames=num_frames, width=stream.codec_context.width, height=stream.codec_context.height
    )
    if stream.base_rate and stream.average_rate == stream.base_rate:
        return info  # constant rate: the header is right, and the extra seek would cost every open
    end = stream_end(container)
    if end is None or info.duration - end <= ON_GRID / fps:
        return info
    return VideoInfo(fps, max(1, math.floor(end * fps + ON_GRID)), info.width, info.height, end)


def stream_end(container: av.container.InputContainer) -> float | None:
    """Where the first video stream's last frame ends (s from its start): the largest
    presentation time + duration among the packets from the last keyframe on, demuxed
    without decoding; the container is rewound to the start afterwards.

    None unless the container has a full index (mp4/mov) and the packets read reach its last
    entry: a file whose data stops early keeps its header's length, so checks still call it
    truncated.
    """
    stream = container.streams.video[0]
    origin, time_base = stream.start_time or 0, stream.time_base or Fraction(1, 1)
    try:
        entries = stream.index_entries
        if len(entries) < max(1, stream.frames):
            return None
        last_dts = max(entries[i].timestamp for i in range(len(entries)))
        container.seek(last_dts, stream=stream, backward=True, any_frame=False)
        ends, reached = [], False
        for packet in container.demux(stream):
            if packet.pts is not None:
                ends.append(packet.pts + (packet.duration or 0))
            reached = reached or packet.dts == last_dts
        container.seek(origin, stream=stream, backward=True, any_frame=False)
    except (AttributeError, av.FFmpegError, OSError, ValueError):
        return None
    if not reached or not ends:
        return None
    return float((max(ends) - origin) * time_base)


def _keyframe_indices(stream, fps: float, origin: int, time_base: Fraction) -> np.ndarray | None:
    """Sorted frame indices of the keyframes in the container's index (mp4: all of them), or None without one.

    Index timestamps are decode times, at most a few frames before the presentation times
    with B-frames, so a keyframe may be placed a frame or two early: a seek is then skipped
    where it would have saved those frames at best.
    """
    try:
        entries = stream.index_entries
        stamps = [entry.timestamp for entry in entries if entry.is_keyframe]
    except (AttributeError, av.FFmpegError):
        return None
    if not stamps:
        return None
    return np.sort(np.round((np.array(stamps, dtype=np.float64) - origin) * float(time_base) * fps))


# Streams whose keyframes lie at most this many frames apart (median) are "short-GOP": there a
# seek is judged frame by frame (``seeks_past``). On longer GOPs (x264's default 250, Kinetics)
# seeking saves little inside a clip and a gap rule is kept (``NO_INDEX_GAP``).
SHORT_GOP_FRAMES = 32
# A seek is worth this many decoded frames: on 340x256 H.264 at GOP 1, 8 and 16 (``rho bench
# decode``'s files), seeking whenever the keyframe lies over 0-2 frames ahead was fastest, 8 and
# more gave the gain back; a seek and its decoder flush cost about two decoded frames.
SEEK_COST_FRAMES = 2.0
# Long GOPs, or no keyframe index (some mkv/webm files): gaps longer than this (s) are crossed
# by seeking.
NO_INDEX_GAP = 1.0


def keyframe_spacing(keyframes: np.ndarray | None) -> float:
    """The median distance between keyframes, in frames (inf with fewer than two or no index)."""
    if keyframes is None or len(keyframes) < 2:
        return math.inf
    return float(np.median(np.diff(keyframes)))


def seeks_past(keyframes: np.ndarray, position: float, target: float) -> bool:
    """Whether seeking for the frame at ``target`` saves decoding on a short-GOP stream: the
    keyframe a seek lands on (the last at or before it) lies more than ``SEEK_COST_FRAMES``
    frames past ``position``, the frame decoded last (-1 before the first). All-intra files get
    a seek per frame a clip needs, short GOPs one per GOP.
    """
    before = np.searchsorted(keyframes, target, side="right") - 1
    return bool(before >= 0 and keyframes[before] - position > SEEK_COST_FRAMES)


@dataclass
class BytesRead:
    """Compressed bytes demuxed so far (the sizes of the packets PyAV read), for cost accounting."""

    count: int = 0


def _demuxed_frames(container: av.container.InputContainer, stream, read: BytesRead | None):
    """``container.decode(stream)`` (which is this loop), with each packet's size added to ``read``."""
    for packet in container.demux(stream):
        if read is not None:
            read.count += packet.size
        yield from packet.decode()


def decode_times(
    container: av.container.InputContainer,
    times: np.ndarray,
    seek_threshold: float | None = None,
    path: str | Path = "",
    autorotate: bool = True,
    short_side: int | None = None,
    read: BytesRead | None = None,
) -> tuple[np.ndarray, int]:
    """Decode the frames shown at ``times``.

    Args:
        container: an open container (from ``open_video``).
        times: seconds from the stream's start, any order, repeats allowed.
        seek_threshold: None (the default): chosen from the container's keyframe index. On
            short-GOP and all-intra streams (keyframes at most ``SHORT_GOP_FRAMES`` apart)
            seek wherever a keyframe saves decoding (``seeks_past``), so a clip's frames are
            decoded nearly alone; on long GOPs, or without an index, gaps over
            ``NO_INDEX_GAP`` s are crossed by seeking. A number: gaps (s) longer than this
            are crossed by seeking (where a keyframe lies between), shorter ones by decoding
            forward, whatever the GOP.
        path: for error messages.
        autorotate: turn frames as the stream's display matrix says (``display_turn``).
        short_side: scale frames in the RGB conversion so their short side is at most this
            (``scaled_size``); None keeps the stored size.
        read: add the sizes of the packets demuxed to it (the compressed bytes decoded).

    Returns:
        (frames uint8 [len(times), H, W, 3] in the order of ``times``, number of times past
        the stream's end that were given its last frame).

    Raises:
        BadVideo: the stream yields no frame at all, or the decoder fails.
    """
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate)
    time_base = stream.time_base or Fraction(1, 1)
    origin = stream.start_time or 0
    requested = np.asarray(times, dtype=np.float64)
    targets, order = np.unique(requested * fps, return_inverse=True)  # requested times in frames
    found: list[np.ndarray | None] = [None] * len(targets)
    position = -math.inf  # where the last decoded frame starts, in frames
    last_frame, last_length, turn = None, 1.0, _unturned
    seeking_helps = True  # False once a seek lands behind what was decoded (an index gone wrong)
    keyframes = _keyframe_indices(stream, fps, origin, time_base)
    auto = seek_threshold is None and keyframe_spacing(keyframes) <= SHORT_GOP_FRAMES
    gap = max(1, (NO_INDEX_GAP if seek_threshold is None else seek_threshold) * fps)  # frames
    context = stream.codec_context
    size = scaled_size(context.width, context.height, short_side) if short_side else None

    def worth_seeking(target: float) -> bool:
        """Whether to seek for ``target``: by the keyframe index (``auto``), else a long gap and
        (where the container has an index) a keyframe after what was decoded."""
        if not seeking_helps:
            return False
        if auto:
            return seeks_past(keyframes, max(position, -1.0), target)
        if target - max(position, 0) <= gap:
            return False
        if keyframes is None:
            return True
        before = np.searchsorted(keyframes, target, side="right") - 1  # the keyframe a seek lands on
        return before >= 0 and keyframes[before] > position

    i = 0
    try:
        while i < len(targets):
            seeked = worth_seeking(targets[i])
            if seeked:
                offset = origin + int(targets[i] / fps / time_base)
                container.seek(offset, stream=stream, backward=True, any_frame=False)
            for frame in _demuxed_frames(container, stream, read):
                if frame.pts is None:
                    continue
                start = frame_position(frame, origin, time_base, fps)
                if seeked:
                    seeking_helps, seeked = start > position, False
                if start <= position:
                    continue  # a seek landed before what we already have
                if last_frame is None and autorotate:
                    turn = _TURNS[display_turn(frame)]
                while i < len(targets) and not shown_by(start, targets[i]):
                    found[i] = turn(frame_rgb(last_frame if last_frame is not None else frame, size))
                    i += 1  # the time falls before this frame: the previous one is shown
                position, last_frame = start, frame
                last_length = frame_length(frame, time_base, fps)
                if i == len(targets):
                    break
                if worth_seeking(targets[i]):
                    break  # far gap: seek in the outer loop
            else:
                break  # end of stream
    except (av.FFmpegError, OSError, ValueError):
        raise BadVideo(f"{path}: truncated (the decoder failed part-way through the file)") from None
    if last_frame is None:
        raise BadVideo(f"{path}: truncated (no frame could be decoded)")
    padded = 0
    if i < len(targets):  # the stream ended: its last frame is shown until its end, then repeated
        tail = turn(frame_rgb(last_frame, size))
        past_end = shown_by(position + last_length, targets[i:])
        found[i:] = [tail] * (len(targets) - i)
        padded = int(np.isin(order, np.flatnonzero(past_end) + i).sum())
    return np.stack([found[k] for k in order]), padded


class OpenVideo(Protocol):
    """One video opened by a ``Decoder``: what sampling needs to know, and the frames at given times."""

    info: VideoInfo

    def at(self, times: np.ndarray) -> tuple[np.ndarray, int]:
        """``decode_times``' contract: (uint8 [len(times), H, W, 3], times past the end)."""
        ...

    def close(self) -> None: ...


class Decoder(Protocol):
    """A decoding backend (``data.decoder``): opens a file as an ``OpenVideo``.

    Every backend gives the same frames for the same times (the frame shown then, turned by
    the display matrix, the last one repeated past the end) and raises ``BadVideo`` with the
    same kinds for the same bad files.
    """

    name: str

    def open(
        self, path: str | Path, *, seek_threshold: float | None, autorotate: bool, short_side: int | None
    ) -> OpenVideo: ...


@dataclass
class PyAVVideo:
    """One open video decoded by PyAV (``decode_times``)."""

    container: av.container.InputContainer
    info: VideoInfo
    path: str | Path
    seek_threshold: float | None
    autorotate: bool
    short_side: int | None
    bytes_read: BytesRead = field(default_factory=BytesRead)  # packets demuxed so far

    def at(self, times: np.ndarray) -> tuple[np.ndarray, int]:
        return decode_times(
            self.container,
            times,
            self.seek_threshold,
            self.path,
            self.autorotate,
            self.short_side,
            self.bytes_read,
        )

    def close(self) -> None:
        self.container.close()


class PyAVDecoder:
    """The default backend: one PyAV container per video, ``decode_times`` on it."""

    name = "pyav"

    def open(
        self,
        path: str | Path,
        *,
        seek_threshold: float | None = None,
        autorotate: bool = True,
        short_side=None,
    ) -> OpenVideo:
        container = open_video(path)
        try:
            info = probe(container, path)
        except BaseException:
            container.close()
            raise
        return PyAVVideo(container, info, path, seek_threshold, autorotate, short_side)


def _is_decoder_class(cls: Any) -> bool:
    """Whether an entry point of ``rho.decoders`` loaded a decoder class (a ``name`` and an ``open``)."""
    return (
        inspect.isclass(cls)
        and isinstance(getattr(cls, "name", None), str)
        and callable(getattr(cls, "open", None))
    )


def available_decoders() -> list[str]:
    """Every name ``decoder`` takes: the built-in ``DECODERS`` and the ``rho.decoders`` entry points, sorted."""
    return plugins.available(dict.fromkeys(DECODERS), DECODER_ENTRY_POINT_GROUP)


def decoder(name: str = "pyav", device: str = "cpu") -> Decoder:
    """The backend called ``name`` (``data.decoder``); ``device`` = "cuda" is torchcodec's NVDEC.

    A name that is not built in (``DECODERS``) is looked up among the entry points of
    ``rho.decoders``: a class with a ``name`` and ``open`` (the ``Decoder`` protocol), made
    with no arguments; such a decoder decodes on the CPU.

    Raises:
        DecoderUnavailable: torchcodec or its FFmpeg libraries are missing (the message says
            what to install).
        ValueError: an unknown name (listing the choices), an entry point that is not a decoder
            class, or a device the decoder does not decode on.
    """
    if name == "pyav":
        if device != "cpu":
            raise ValueError(f"decoder pyav decodes on the CPU only, got device {device!r}")
        return PyAVDecoder()
    if name == "torchcodec":
        from harness.data.decode_torchcodec import TorchcodecDecoder

        return TorchcodecDecoder(device)
    found = plugins.lookup(
        dict.fromkeys(DECODERS),
        DECODER_ENTRY_POINT_GROUP,
        name,
        kind="decoder",
        accept=_is_decoder_class,
        must_be="a decoder class (a name attribute and an open method)",
    )
    if device != "cpu":
        raise ValueError(f"decoder {name} decodes on the CPU only, got device {device!r}")
    return found()


def decode_clips(
    entry: VideoEntry,
    frames: int,
    stride: int,
    fps: float | None,
    pick_starts: Callable[[int, int, float], np.ndarray],
    seek_threshold: float | None = None,
    cache: FrameCache | None = None,
    autorotate: bool = True,
    backend: Decoder | None = None,
    short_side: int | None = None,
    read: BytesRead | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Open a manifest entry once and decode the clips whose starts ``pick_starts`` chooses.

    Args:
        entry: the video (its optional start/end window limits where clips may lie).
        frames, stride: T and τ, on a grid of ``fps`` frames per second (None: the video's own).
        pick_starts: (grid frames in the window, clip span in grid frames, grid fps) → start
            indices [n] on the grid.
        seek_threshold: see ``decode_times``.
        cache: take the frames from this cache (decoding the whole video into it on a miss)
            instead of decoding them from the file; the frames are the same.
        autorotate: see ``decode_times`` (a cache turns frames as it was built to).
        backend: the decoder (``decoder(name)``; None: PyAV).
        short_side: scale frames in the decoder to at most this short side (``scaled_size``;
            not with a cache, which keeps full frames).
        read: add the compressed bytes decoded to it: the packets PyAV demuxed, or for another
            backend (which does not say) the file's size; nothing for frames from the cache.

    Returns:
        (uint8 [n, T, H, W, 3], start times in seconds [n], frames padded past the end).
    """
    if cache is not None:
        video = cache.get(entry.path)
        return _clips(entry, video.info, frames, stride, fps, pick_starts, video.at)
    opened = (backend or PyAVDecoder()).open(
        entry.path, seek_threshold=seek_threshold, autorotate=autorotate, short_side=short_side
    )
    try:
        return _clips(entry, opened.info, frames, stride, fps, pick_starts, opened.at)
    finally:
        opened.close()
        if read is not None:
            read.count += _bytes_read(opened, entry.path)


def _bytes_read(opened: OpenVideo, path: str | Path) -> int:
    """The compressed bytes an open video read: PyAV's demuxed packets, else the file's size."""
    counted = getattr(opened, "bytes_read", None)
    if isinstance(counted, BytesRead):
        return counted.count
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _clips(
    entry: VideoEntry,
    info: VideoInfo,
    frames: int,
    stride: int,
    fps: float | None,
    pick_starts: Callable[[int, int, float], np.ndarray],
    fetch: Callable[[np.ndarray], tuple[np.ndarray, int]],
) -> tuple[np.ndarray, np.ndarray, int]:
    """``decode_clips`` once the video is known: place the clips, then ``fetch`` their frame times."""
    grid_fps = fps or info.fps
    timing = ClipTiming(frames, stride, grid_fps)
    window_start, window_end = entry.window
    offset = window_start or 0.0
    duration = min(info.duration, window_end if window_end is not None else math.inf) - offset
    if duration <= 0:
        raise BadVideo(f"{entry.path}: window {entry.window} lies outside the video ({info.duration:.2f} s)")
    starts = pick_starts(grid_length(duration, grid_fps), timing.span, grid_fps)
    times = offset + np.concatenate([timing.frame_times(s) for s in starts])
    decoded, padded = fetch(times)
    return decoded.reshape(len(starts), frames, *decoded.shape[1:]), offset + starts / grid_fps, padded


# ---------------------------------------------------------------------------------------------
# Whole videos decoded once and kept in memory (``data.cache``).


@dataclass(frozen=True)
class DecodedVideo:
    """Every frame of one video, uint8 [N, H, W, 3], with where each starts and where the last ends (in frames)."""

    frames: np.ndarray
    info: VideoInfo
    starts: np.ndarray
    end: float

    def at(self, times: np.ndarray) -> tuple[np.ndarray, int]:
        """The frames shown at ``times`` and how many times lie past the last frame (``decode_times``' contract)."""
        slots = np.asarray(times, dtype=np.float64) * self.info.fps
        shown = np.array([np.count_nonzero(shown_by(self.starts, slot)) for slot in slots], dtype=np.int64)
        past_end = sum(bool(shown_by(self.end, slot)) for slot in slots)
        return self.frames[np.clip(shown - 1, 0, len(self.frames) - 1)], past_end


def decode_video(path: str | Path, autorotate: bool = True) -> DecodedVideo:
    """Decode every frame of a video, with its start on the average rate's grid (as ``decode_times`` places it)."""
    container = open_video(path)
    try:
        info = probe(container, path)
        stream = container.streams.video[0]
        time_base, origin = stream.time_base or Fraction(1, 1), stream.start_time or 0
        frames, starts, length, turn = [], [], 1.0, _unturned
        for frame in container.decode(stream):
            start = None if frame.pts is None else frame_position(frame, origin, time_base, info.fps)
            if start is None or (starts and start <= starts[-1]):
                continue
            if not frames and autorotate:
                turn = _TURNS[display_turn(frame)]
            frames.append(turn(frame_rgb(frame)))
            starts.append(start)
            length = frame_length(frame, time_base, info.fps)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise BadVideo(f"{path}: decoding failed ({exc.__class__.__name__}: {exc})") from None
    finally:
        container.close()
    if not frames:
        raise BadVideo(f"{path}: no decodable frames")
    return DecodedVideo(np.stack(frames), info, np.array(starts), starts[-1] + length)


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable; free pages where /proc is missing)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class CacheFull(MemoryError):
    """Adding a video would take a ``FrameCache`` past its byte limit."""


class FrameCache:
    """Decoded videos kept in memory, so each is decoded once rather than once per epoch.

    For datasets that fit in memory (the synthetic set: about 250 MB for 320 videos at 64 px).
    Filled in the training process before the DataLoader workers start, the forked workers share
    its pages (copy-on-write, never written); a worker that misses decodes into its own copy.

    Args:
        limit_bytes: the most the frames may take (default: half the memory available now).
        autorotate: turn frames as their display matrix says (``decode_times``).
    """

    def __init__(self, limit_bytes: int | None = None, autorotate: bool = True) -> None:
        self.limit = limit_bytes if limit_bytes is not None else available_memory() // 2
        self.autorotate = autorotate
        self.nbytes = 0
        self._videos: dict[str, DecodedVideo] = {}

    def __len__(self) -> int:
        return len(self._videos)

    def get(self, path: str | Path) -> DecodedVideo:
        """The decoded video at ``path``, decoding it on a miss; raises ``CacheFull`` past the limit."""
        video = self._videos.get(str(path))
        if video is None:
            video = decode_video(path, self.autorotate)
            if self.nbytes + video.frames.nbytes > self.limit:
                raise CacheFull(
                    f"{path}: {len(self)} decoded videos take {self.nbytes / 2**20:.0f} MiB and this one "
                    f"{video.frames.nbytes / 2**20:.0f} MiB more, past the cache's {self.limit / 2**20:.0f} MiB"
                )
            self._videos[str(path)] = video
            self.nbytes += video.frames.nbytes
        return video
