"""Constants about video files that commands need without the data pipeline's imports.

``rho --help`` builds every parser, and ``rho data import folders --extensions`` shows this list
as its default: importing it from here keeps numpy (``harness.data.manifest``) out of start-up.
"""

#: extensions ``rho data import folders`` takes by default (any case)
VIDEO_EXTENSIONS = (
    ".3g2", ".3gp", ".asf", ".avi", ".divx", ".dv", ".f4v", ".flv", ".m2ts", ".m2v", ".m4v", ".mj2",
    ".mjpeg", ".mjpg", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".ogg", ".ogv", ".qt",
    ".rm", ".rmvb", ".ts", ".vob", ".webm", ".wmv", ".y4m",
)  # fmt: skip
