"""Decoding real files: display-matrix rotation and variable frame rate."""

from fractions import Fraction

import av
import numpy as np
import pytest
from videos import index_frame, read_index

from harness.data.decode import VideoInfo, decode_clips, decode_times, decode_video, open_video, probe
from harness.data.manifest import VideoEntry

RED = (255, 0, 0)


def write_turned_video(path, degrees: int, hflip: bool = False, vflip: bool = False):
    """A 64x32 (W x H) mp4 whose top-left 8x8 corner is red, stored with a display matrix."""
    image = np.zeros((32, 64, 3), np.uint8)
    image[:8, :8] = RED
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv444p"
        stream.options = {"crf": "0"}
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, image


def shown(image: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    """What a player shows: the stored image turned counter-clockwise by ``degrees``, then mirrored."""
    turned = np.rot90(image, degrees // 90)
    turned = turned[:, ::-1] if hflip else turned
    return turned[::-1] if vflip else turned


def red_corner(frame: np.ndarray) -> tuple[int, int]:
    """(row, column) half (0 top/left, 1 bottom/right) of the red patch."""
    rows, cols = np.nonzero((frame[..., 0] > 200) & (frame[..., 1] < 60))
    return int(rows.mean() > frame.shape[0] / 2), int(cols.mean() > frame.shape[1] / 2)


@pytest.mark.parametrize(
    "degrees,hflip,vflip",
    [(90, False, False), (180, False, False), (270, False, False), (90, True, False), (0, False, True)],
)
def test_display_matrix_turns_frames_as_players_show_them(tmp_path, degrees, hflip, vflip):
    path, image = write_turned_video(tmp_path / "phone.mp4", degrees, hflip, vflip)
    expected = shown(image, degrees, hflip, vflip)
    with open_video(path) as container:
        frames, _ = decode_times(container, np.array([0.0, 0.1]))
    assert frames.shape == (2, *expected.shape)
    assert red_corner(frames[0]) == red_corner(expected)
    assert np.abs(frames[0].astype(int) - expected).max() <= 8  # the whole picture, not just the corner
    cached = decode_video(path)
    assert np.array_equal(cached.at(np.array([0.0, 0.1]))[0], frames)
    with open_video(path) as container:
        stored, _ = decode_times(container, np.array([0.0]), autorotate=False)
    assert stored.shape == (1, 32, 64, 3) and red_corner(stored[0]) == (0, 0)
    assert decode_video(path, autorotate=False).frames.shape[1:] == (32, 64, 3)


def test_ninety_degree_phone_video_comes_out_portrait(tmp_path):
    path, _ = write_turned_video(tmp_path / "phone.mp4", 90)
    with open_video(path) as container:
        frames, _ = decode_times(container, np.array([0.0]))
    assert frames.shape[1:3] == (64, 32)  # H x W: stored 64 wide, 32 high, shown 32 wide, 64 high
    assert red_corner(frames[0]) == (1, 0)  # counter-clockwise: top-left lands bottom-left


GAPS_MS = [40, 40, 120, 40, 80, 40, 160, 40, 80, 40] * 3  # uneven gaps, none under 40 ms


def write_vfr_video(path, gaps_ms=GAPS_MS, options=None):
    """An mp4 whose frame i shows i and starts at an uneven, explicit timestamp (ms)."""
    starts = np.concatenate([[0], np.cumsum(gaps_ms)[:-1]])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "0", "g": "8"} if options is None else options
        for index, start in enumerate(starts):
            frame = av.VideoFrame.from_ndarray(index_frame(index), format="rgb24")
            frame.pts, frame.time_base = int(start), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, starts / 1000


@pytest.mark.parametrize("seek_threshold", [0.1, 100.0])
def test_variable_frame_rate_gives_the_frame_shown_at_each_time(tmp_path, seek_threshold):
    path, starts = write_vfr_video(tmp_path / "vfr.mp4")
    with open_video(path) as container:
        half = 0.5 / float(container.streams.video[0].average_rate)
    ends = np.append(starts[1:], starts[-1] + GAPS_MS[-1] / 1000)
    # times inside each frame's display interval, at least half a frame before the next starts
    times, expected = [], []
    for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
        for t in np.arange(start, end - half - 1e-3, 0.01):
            times.append(t)
            expected.append(index)
    order = np.random.default_rng(0).permutation(len(times))
    with open_video(path) as container:
        frames, padded = decode_times(container, np.array(times)[order], seek_threshold=seek_threshold)
    assert [read_index(f) for f in frames] == list(np.array(expected)[order])
    assert padded == 0
    cached, cached_padded = decode_video(path).at(np.array(times)[order])
    assert np.array_equal(cached, frames) and cached_padded == 0


def test_variable_frame_rate_at_25_fps_shows_every_frame_that_lasts_a_grid_step(tmp_path):
    path, starts = write_vfr_video(tmp_path / "vfr.mp4")
    times = np.arange(0, starts[-1], 1 / 25)
    with open_video(path) as container:
        frames, _ = decode_times(container, times)
    indices = [read_index(f) for f in frames]
    assert indices == sorted(indices)  # never back in time
    assert set(indices) == set(range(len(starts) - 1))  # every frame (all last >= 40 ms) is shown


def test_vfr_header_that_overshoots_the_last_frame_gives_the_last_frames_end(tmp_path):
    # a long first frame: the mp4 header's length (frames / average rate) says 1.52 s, the
    # frames end at 1.36 s (1.32 s + 40 ms), the 0.16 s overshoot of the file
    path, starts = write_vfr_video(tmp_path / "long_first.mp4", [200] + [40] * 29, options={})
    with open_video(path) as container:
        stream = container.streams.video[0]
        header = float(stream.frames / stream.average_rate)
        info = probe(container, path)
    last_end = starts[-1] + 0.04
    assert header == pytest.approx(1.52) and last_end == pytest.approx(1.36)
    assert info.duration == pytest.approx(last_end, abs=1e-9)
    assert info.num_frames <= last_end * info.fps

    def last_start(num_frames: int, span: int, fps: float) -> np.ndarray:
        return np.array([num_frames - span])  # the latest clip the video's length allows

    clips, clip_starts, padded = decode_clips(VideoEntry(path, 0), 4, 1, 25.0, last_start)
    assert padded == 0
    assert clip_starts[0] + 3 / 25 < last_end
    assert read_index(clips[0, -1]) == len(starts) - 1  # the clip reaches the last frame


def test_constant_rate_probe_with_b_frames_keeps_the_headers_numbers(tmp_path):
    path, _ = write_vfr_video(tmp_path / "cfr.mp4", [40] * 100, options={})  # x264 defaults: B-frames
    with open_video(path) as container:
        assert container.streams.video[0].codec_context.has_b_frames
        assert probe(container, path) == VideoInfo(fps=25.0, num_frames=100, width=64, height=64)
        frames, padded = decode_times(container, np.array([0.0, 3.96]))
    assert [read_index(f) for f in frames] == [0, 99] and padded == 0  # probe rewound the container


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_the_display_matrix_is_read_from_both_pyav_side_data_apis(tmp_path, degrees):
    """PyAV 18.1.1 made ``frame.side_data`` a mapping of ``Type`` keys; up to 18.1.0 it was a sequence
    of side-data objects with a ``type``. The same real side data, in either shape, gives one turn."""
    from harness.data.decode import display_matrix, display_turn

    path, _ = write_turned_video(tmp_path / "phone.mp4", degrees)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        current = frame.side_data
        sequence = list(current.values()) if hasattr(current, "values") else list(current)
        assert any(d.type == av.sidedata.sidedata.Type.DISPLAYMATRIX for d in sequence)

        class SequenceFrame:  # the real side-data objects, as PyAV <= 18.1.0 hands them out
            side_data = sequence

        assert display_matrix(SequenceFrame()) == display_matrix(frame)
        assert len(display_matrix(frame)) == 36  # nine int32
        assert display_turn(SequenceFrame()) == display_turn(frame) != "none"

        class NoSideData:
            side_data: list = []

        assert display_matrix(NoSideData()) is None and display_turn(NoSideData()) == "none"
