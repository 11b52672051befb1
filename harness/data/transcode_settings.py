"""``rho data transcode``'s options and their checks, apart from the encoder so that the command
line can build its parser (and show the defaults) without importing PyAV or NumPy."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import RhoError


class TranscodeError(RhoError, ValueError):
    """Options or folders that cannot work; the message names the option or file and the fix."""


@dataclass(frozen=True)
class TranscodeSettings:
    """How every video is re-encoded (``rho data transcode``'s options)."""

    short_side: int | None = 256  # None: keep the size (made even)
    gop: int = 16  # keyframe interval in frames; 1: all-intra
    fps: float | None = None  # None: the source's average rate
    codec: str = "libx264"
    crf: int = 23
    preset: str = "veryfast"

    def check(self) -> None:
        """Raise ``TranscodeError`` naming the first bad option and what is allowed."""
        if self.short_side is not None and (self.short_side < 16 or self.short_side % 2):
            raise TranscodeError(
                f"--short-side {self.short_side}: use an even number >= 16 (4:2:0 video needs even sizes)"
            )
        if self.gop < 1:
            raise TranscodeError(f"--gop {self.gop}: use a keyframe interval >= 1 frame (1: all-intra)")
        if self.fps is not None and not (0 < self.fps <= 240):
            raise TranscodeError(
                f"--fps {self.fps}: use a frame rate in (0, 240], or leave it out to keep each video's"
            )
        if not 0 <= self.crf <= 51:
            raise TranscodeError(
                f"--crf {self.crf}: use 0..51 (0 lossless, 18 visually lossless, 23 x264's default)"
            )
        import av  # here, not at the top: the command line builds its parser from these defaults

        from harness.data.transcode import trial_encode

        try:
            codec = av.codec.Codec(self.codec, "w")
        except (av.codec.codec.UnknownCodecError, ValueError):
            codec = None
        if codec is None or codec.type != "video":
            raise TranscodeError(
                f"--codec {self.codec}: not a video encoder in this PyAV build; use libx264 (the default), "
                "or another name from `python -c 'import av; print(sorted(av.codecs_available))'`"
            )
        try:
            trial_encode(self)
        except (av.FFmpegError, ValueError) as exc:
            raise TranscodeError(
                f"--codec {self.codec} --crf {self.crf} --preset {self.preset}: the encoder refuses them "
                f"({type(exc).__name__}: {exc}); for libx264 use a preset such as veryfast, fast or medium"
            ) from None
