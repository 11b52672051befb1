"""Manifests: CSV files with a header ``path,label`` (and optional extra columns).

``path`` is a video file, absolute or relative to the manifest's folder; ``label`` is a
non-negative integer class index. Optional columns the harness knows: ``class_name``,
``start`` and ``end`` (seconds: sample only inside that window, as Kinetics trims do).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.atomic import atomic_file
from harness.errors import RhoError

REQUIRED_COLUMNS = ("path", "label")


class ManifestError(RhoError, ValueError):
    """A manifest that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class VideoEntry:
    """One manifest row, with ``path`` resolved."""

    path: Path
    label: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def window(self) -> tuple[float | None, float | None]:
        """Optional (start, end) seconds inside the file, from the ``start``/``end`` columns."""
        start, end = self.extra.get("start"), self.extra.get("end")
        return (
            float(start) if start not in (None, "") else None,
            float(end) if end not in (None, "") else None,
        )


def read_manifest(
    path: str | Path,
    check_files: bool = True,
    root: str | Path | None = None,
    allow_outside_root: bool = True,
) -> list[VideoEntry]:
    """Read and validate a manifest.

    Args:
        path: the CSV file.
        check_files: fail on rows whose video file does not exist.
        root: folder relative paths resolve against (default: the manifest's folder).
        allow_outside_root: when False, a row whose resolved path lies outside ``root`` is refused.

    Returns:
        One ``VideoEntry`` per data row, in file order.

    Raises:
        ManifestError: naming the file and the 1-based line of the first bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} does not exist (make one with `rho data import` or `rho data synth`)"
        )
    base = Path(root) if root is not None else path.parent
    base_resolved = base.resolve()  # once, not per row
    entries: list[VideoEntry] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"{path}: header {columns!r} lacks column(s) {missing}; the first line must be `path,label`"
            )
        seen: dict[Path, int] = {}
        for row in reader:
            line = reader.line_num
            raw_path, raw_label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not raw_path:
                raise ManifestError(f"{path}:{line}: empty path")
            try:
                label = int(raw_label)
            except ValueError:
                raise ManifestError(
                    f"{path}:{line}: label {raw_label!r} is not an integer class index (>= 0)"
                ) from None
            if label < 0:
                raise ManifestError(
                    f"{path}:{line}: label {label} is negative; labels are class indices >= 0"
                )
            video = Path(raw_path)
            video = video if video.is_absolute() else base / video
            if not allow_outside_root and leaves_root(video, base_resolved):
                raise ManifestError(
                    f"{path}:{line}: {raw_path!r} lies outside the data root {base}; "
                    "move it under the root, or allow paths outside it: data.allow_outside_root=true "
                    "(`rho data check --allow-outside-root`)"
                )
            if check_files and not video.is_file():
                raise ManifestError(f"{path}:{line}: video file {video} does not exist")
            if video in seen:
                raise ManifestError(
                    f"{path}:{line}: {raw_path!r} repeats line {seen[video]}; remove the duplicate row"
                )
            seen[video] = line
            extra = {
                k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None and v is not None
            }
            entries.append(VideoEntry(video, label, extra))
    if not entries:
        raise ManifestError(f"{path}: no rows after the header")
    return entries


def leaves_root(video: Path, root: Path) -> bool:
    """Whether ``video`` lies outside ``root`` once ``..`` and symlinks are followed.

    The one rule for manifest rows that training applies unless ``data.allow_outside_root``,
    and that ``rho data check`` and the importers apply too, so all three agree on every row.
    """
    return not video.resolve().is_relative_to(root.resolve())


def manifest_path(video: str | Path, folder: Path) -> str:
    """How a manifest in ``folder`` names ``video``: relative to ``folder`` when it lies under it, else absolute.

    Only ``..`` is normalised, no symlink is followed: a link keeps its own path (resolving it
    would turn a symlinked video into a second row of its target). When the two paths name the
    same places through different links (``/tmp`` and ``/private/tmp``), the video's folder is
    resolved, its file name kept.
    """
    video, folder = Path(os.path.abspath(video)), Path(os.path.abspath(folder))
    if video.is_relative_to(folder):
        return video.relative_to(folder).as_posix()
    parent, real_folder = video.parent.resolve(), folder.resolve()
    if parent.is_relative_to(real_folder):
        return (parent / video.name).relative_to(real_folder).as_posix()
    return str(video)


def write_manifest(
    path: str | Path, rows: list[dict[str, object]], relative_to_manifest: bool = True
) -> Path:
    """Write rows (dicts with at least ``path`` and ``label``) as a manifest; returns its path.

    With ``relative_to_manifest`` paths under the manifest's folder are written relative to it
    (``manifest_path``), so a dataset folder can be moved as a whole.
    """
    path = Path(path)
    extra = sorted({k for row in rows for k in row} - set(REQUIRED_COLUMNS))
    with atomic_file(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*REQUIRED_COLUMNS, *extra])
        writer.writeheader()
        for row in rows:
            out = dict(row)
            video = Path(str(out["path"]))
            if relative_to_manifest and video.is_absolute():
                out["path"] = manifest_path(video, path.parent)
            writer.writerow(out)
    return path


def num_classes(entries: list[VideoEntry]) -> int:
    """Number of classes a manifest spans (max label + 1)."""
    return max(e.label for e in entries) + 1
