"""Broken video files as a real dataset has them, and the word a skip warning must use for each."""

from __future__ import annotations

from pathlib import Path

SKIP_WARNING = "skipping unreadable video"


def write_bad_videos(folder: Path, good: Path) -> dict[str, Path]:
    """A truncated mp4 (the first half of ``good``), an empty file and a text file named .mp4,
    keyed by the kind their warning names."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "truncated": folder / "cut.mp4",
        "empty": folder / "empty.mp4",
        "not a video": folder / "notes.mp4",
    }
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].touch()
    files["not a video"].write_text("shopping list: milk, eggs\n" * 20)
    return files


def warnings_per_file(lines: list[str], bad: dict[str, Path]) -> dict[str, list[str]]:
    """The skip warnings among ``lines``, by the kind of bad file each names."""
    warned = [line for line in lines if SKIP_WARNING in line]
    return {kind: [line for line in warned if f"{path}:" in line] for kind, path in bad.items()}
