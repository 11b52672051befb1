"""Write frames to an H.264 mp4 with PyAV: the one video writer (the synthetic dataset, tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int,
    crf: int = 18,
    gop: int | None = None,
    b_frames: bool = True,
) -> Path:
    """Encode uint8 RGB frames [H, W, 3] (H and W even) as H.264/yuv420p at ``fps``.

    One encoder thread. ``gop`` sets the keyframe interval (None: x264's default).
    ``b_frames=False`` also turns off x264's macroblock tree: then the bytes depend on the
    frames alone (mbtree with B-frames was measured not to be deterministic). The file is
    written beside its final name, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
    if not b_frames:
        options.update({"bf": "0", "x264-params": "mbtree=0"})
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"{path}: libx264 needs even frame sizes, got {width}x{height}")
                stream = container.add_stream("libx264", rate=Fraction(fps), options=options)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.thread_count = 1
                if gop is not None:
                    stream.codec_context.gop_size = gop
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
