"""PyAV with FFmpeg's own decoding threads, an example decoder plugin (``data.decoder: pyav_threads``).

The built-in ``pyav`` backend decodes each video on one thread, because DataLoader workers
give the parallelism. With ``data.workers: 0`` (a debugger, a notebook, a machine short of
memory for worker processes) or a few large videos, FFmpeg's frame and slice threads use the
idle cores instead. The frames are the same as ``pyav``'s: threading changes how
FFmpeg decodes, not what, and the frames at the requested times are picked by the harness's
own ``decode_times``, as ``pyav`` picks them.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.data.decode import PyAVVideo, open_video, probe


class ThreadedPyAVDecoder:
    """The decoder class (the ``harness.data.decode.Decoder`` protocol): a ``name`` and ``open``.

    The harness makes one with no arguments; ``RHO_DECODE_THREADS`` sets the threads per
    video (default 0: FFmpeg picks, one per core).
    """

    name = "pyav_threads"

    def __init__(self) -> None:
        self.threads = int(os.environ.get("RHO_DECODE_THREADS", "0"))

    def open(
        self,
        path: str | Path,
        *,
        seek_threshold: float | None = None,
        autorotate: bool = True,
        short_side: int | None = None,
    ) -> PyAVVideo:
        container = open_video(path)  # BadVideo for a file that does not open, as pyav raises
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads (open_video set one thread)
            stream.codec_context.thread_count = self.threads
            info = probe(container, path)
        except BaseException:
            container.close()
            raise
        # The open video (``harness.data.decode.OpenVideo``: ``info``, ``at(times)``, ``close``) is
        # the built-in one: only how the container decodes differs.
        return PyAVVideo(container, info, path, seek_threshold, autorotate, short_side)
