"""Manifests: CSV files with a header ``path,label`` (and optional extra columns).

``path`` is a video file, absolute or relative to the manifest's folder; ``label`` is a
non-negative integer class index. Optional columns the harness knows: ``class_name``,
``start`` and ``end`` (seconds: sample only inside that window, as Kinetics trims do).

Where the number of classes is known, a label must be below it: ``classes.txt`` beside the
manifest (one name a line, in label order, as the importers and ``rho data synth`` write it),
else the ``spec.json`` of ``rho data synth``, and whatever the caller knows (the dataset
family, ``method.num_classes``).
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_file
from harness.errors import RhoError

REQUIRED_COLUMNS = ("path", "label")


class ManifestError(RhoError, ValueError):
    """A manifest that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class ClassCount:
    """How many classes a manifest's labels index, what says so and how to mend a label past it."""

    count: int
    source: str  # "/data/ucf/classes.txt lists 101 classes", "data.dataset ucf101 has 101 classes"
    fix: str  # what else to change when the row is right


CLASSES_FILE = "classes.txt"
SYNTH_STAMP = "spec.json"


def synth_stamp(folder: str | Path) -> dict[str, Any] | None:
    """The ``spec`` of the ``spec.json`` that ``rho data synth`` leaves in ``folder``, or None."""
    try:
        stamp = json.loads((Path(folder) / SYNTH_STAMP).read_text())
    except (OSError, ValueError):
        return None
    spec = stamp.get("spec") if isinstance(stamp, dict) else None
    return spec if isinstance(spec, dict) else None


def declared_classes(manifest: str | Path) -> ClassCount | None:
    """The number of classes the files beside ``manifest`` declare: ``classes.txt`` (importers,
    ``rho data synth``), else ``spec.json`` (``rho data synth``); None when neither says."""
    folder = Path(manifest).parent
    names = folder / CLASSES_FILE
    try:
        count = sum(1 for line in names.read_text().splitlines() if line.strip())
    except (OSError, ValueError):
        count = 0
    if count:
        return ClassCount(
            count,
            f"{names} lists {count} classes",
            f"add the class to {names} (one name a line, in label order)",
        )
    spec = synth_stamp(folder)
    classes = spec.get("classes") if spec else None
    if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 1:
        return ClassCount(
            classes,
            f"{folder / SYNTH_STAMP} (rho data synth) says {classes} classes",
            f"remake the dataset with `rho data synth {folder} --classes N`",
        )
    return None


def dataset_classes(dataset: str, key: str) -> ClassCount | None:
    """The classes of the dataset family ``dataset`` (given as ``key``, e.g. ``data.dataset``;
    ``harness.config.DATASET_CLASSES``); None for synthetic (its spec.json says) and custom."""
    from harness.config import DATASET_CLASSES

    count = DATASET_CLASSES.get(dataset)
    if count is None:
        return None
    return ClassCount(
        count, f"{key} {dataset} has {count} classes", f"set {key}: custom if the manifest is not {dataset}'s"
    )


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


class ManifestRows(Sequence[VideoEntry]):
    """Manifest rows held as columns: the paths in one bytes buffer with offsets, labels as int32,
    each extra column as codes into its distinct values. ``rows[i]`` builds the ``VideoEntry``.

    A list of ``VideoEntry`` objects is ~900 bytes of Python objects per row that a DataLoader
    worker's reference counting and garbage collection write to, so every forked worker copies
    the pages of every row it touches, and one full collection copies them all (PyTorch's
    copy-on-access problem: 240k Kinetics rows x 8 ranks x 8 workers is gigabytes). Columns are a
    handful of objects whatever the row count, read without being written.
    """

    def __init__(self, entries: Iterable[VideoEntry]):
        if isinstance(entries, ManifestRows):  # the same columns, read only: shared, not rebuilt
            self._buffer, self._offsets, self._labels = entries._buffer, entries._offsets, entries._labels
            self._columns, self._count = entries._columns, entries._count
            return
        paths: list[bytes] = []
        labels: list[int] = []
        columns: dict[str, dict[str, int]] = {}
        codes: dict[str, list[int]] = {}
        count = 0
        for count, entry in enumerate(entries, start=1):
            paths.append(os.fsencode(entry.path))
            labels.append(entry.label)
            for key, value in entry.extra.items():
                distinct = columns.setdefault(key, {})
                codes.setdefault(key, [-1] * (count - 1)).append(distinct.setdefault(value, len(distinct)))
            for key in codes.keys() - entry.extra.keys():
                codes[key].append(-1)  # the row has no value in this column
        self._buffer = b"".join(paths)
        self._offsets = np.cumsum([0, *map(len, paths)], dtype=np.int64)
        self._labels = np.asarray(labels, dtype=np.int32)
        self._columns = {
            key: (tuple(distinct), np.asarray(codes[key], dtype=np.int32))
            for key, distinct in columns.items()
        }
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"manifest row {index} of {self._count}")
        start, end = self._offsets[index], self._offsets[index + 1]
        extra = {
            key: values[code]
            for key, (values, codes) in self._columns.items()
            if (code := int(codes[index])) >= 0
        }
        return VideoEntry(Path(os.fsdecode(self._buffer[start:end])), int(self._labels[index]), extra)

    def __iter__(self) -> Iterator[VideoEntry]:
        return (self[i] for i in range(self._count))

    @property
    def labels(self) -> np.ndarray:
        """Every row's label (read only)."""
        return self._labels


def read_manifest(
    path: str | Path,
    check_files: bool = True,
    root: str | Path | None = None,
    allow_outside_root: bool = True,
    classes: Iterable[ClassCount | None] = (),
) -> list[VideoEntry]:
    """Read and validate a manifest.

    Args:
        path: the CSV file.
        check_files: fail on rows whose video file does not exist.
        root: folder relative paths resolve against (default: the manifest's folder).
        allow_outside_root: when False, a row whose resolved path lies outside ``root`` is refused.
        classes: what the caller knows of the number of classes (None items are ignored); with
            ``declared_classes`` of the manifest, a label must be below the smallest count.

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
    rows_paths = RowPaths(base)
    known = [c for c in (*classes, declared_classes(path)) if c is not None]
    limit = min(known, key=lambda c: c.count) if known else None
    entries: list[VideoEntry] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(
                f"{path}: header {columns!r} lacks column(s) {missing}; the first line must be `path,label`"
            )
        seen: dict[str, int] = {}  # by the normalised path's text: a str hashes faster than a Path
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
            if limit is not None and label >= limit.count:
                raise ManifestError(
                    f"{path}:{line}: label {label} is not a class index: {limit.source} (labels "
                    f"0..{limit.count - 1}); fix the row, or {limit.fix}"
                )
            video = Path(raw_path) if os.path.isabs(raw_path) else base / raw_path  # one parse a row
            if check_files or not allow_outside_root:
                is_file, outside = rows_paths.check(video)
                if not allow_outside_root and outside:
                    raise ManifestError(
                        f"{path}:{line}: {raw_path!r} lies outside the data root {base}; "
                        "move it under the root, or allow paths outside it: data.allow_outside_root=true "
                        "(`rho data check --allow-outside-root`)"
                    )
                if check_files and not is_file:
                    raise ManifestError(f"{path}:{line}: video file {video} does not exist")
            key = str(video)
            if key in seen:
                raise ManifestError(
                    f"{path}:{line}: {raw_path!r} repeats line {seen[key]}; remove the duplicate row"
                )
            seen[key] = line
            extra = {
                k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None and v is not None
            }
            entries.append(VideoEntry(video, label, extra))
    if not entries:
        raise ManifestError(f"{path}: no rows after the header")
    return entries


CHECKED_KEPT = 16  # manifests whose checked rows ``checked_manifest`` keeps (oldest dropped first)
_checked: dict[tuple[object, ...], ManifestRows] = {}


def checked_manifest(
    path: str | Path,
    check_files: bool = True,
    root: str | Path | None = None,
    allow_outside_root: bool = True,
    classes: Iterable[ClassCount | None] = (),
) -> ManifestRows:
    """``read_manifest`` once per process for a manifest that has not changed: its rows as
    ``ManifestRows``, kept in memory after a successful read and given back while the key holds.

    A study's worker runs trial after trial in one process, each reading the same manifests;
    at 240k Kinetics rows a read is seconds, and on NFS or Lustre its check (one ``lstat`` a
    row) far more. The key is everything that changes the verdict or the rows: the manifest
    as named and absolute, its size, mtime, ctime and inode (a rewrite, in place or by rename,
    changes them), the root as named, absolute and resolved (a repointed symlink changes it),
    ``check_files``, ``allow_outside_root`` and the smallest class count (``classes`` and
    ``declared_classes``, read again each call). Only successes are kept: a bad manifest is
    read, and refused, each time.

    The trade-off: a video deleted, or a folder repointed out of the root, after the check
    passed goes unnoticed until a trial reads it (training skips and names an unreadable
    video). The cache lives only as long as the process (no file on disk: a cache there would
    hide such changes from every later process too), so a new ``rho`` command, or a new torchrun
    trial, checks again.

    Raises:
        ManifestError: as ``read_manifest``.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    try:  # before the read: a rewrite during it leaves a stale key, never stale rows under a new one
        stat_result = os.stat(path)
    except OSError:
        stat_result = None
    known = [c for c in (*classes, declared_classes(path)) if c is not None]
    limit = min(c.count for c in known) if known else None
    key = None
    if stat_result is not None:
        key = (
            os.fspath(path),
            os.path.abspath(path),
            stat_result.st_size,
            stat_result.st_mtime_ns,
            stat_result.st_ctime_ns,
            stat_result.st_ino,
            stat_result.st_dev,
            os.fspath(base),
            os.path.abspath(base),
            os.path.realpath(base),
            check_files,
            allow_outside_root,
            limit,
        )
        kept = _checked.get(key)
        if kept is not None:
            return kept
    rows = ManifestRows(
        read_manifest(
            path, check_files=check_files, root=root, allow_outside_root=allow_outside_root, classes=known
        )
    )
    if key is not None:
        while len(_checked) >= CHECKED_KEPT:
            _checked.pop(next(iter(_checked)))
        _checked[key] = rows
    return rows


def forget_checked_manifests() -> None:
    """Drop what ``checked_manifest`` keeps: the next read of every manifest checks it again."""
    _checked.clear()


class RowPaths:
    """Where manifest rows lead, at one ``lstat`` per row: each distinct folder is resolved once
    (a 240k-row Kinetics manifest has 400 folders; on NFS or Lustre every metadata call is a
    round trip), a row's own file only when it is a symlink."""

    def __init__(self, root: str | Path):
        self.root = os.path.realpath(root)
        self._inside: dict[str, bool] = {}  # folder as written -> whether it resolves under the root

    def _under_root(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def check(self, video: str | Path) -> tuple[bool, bool]:
        """(whether ``video`` is a file, whether it lies outside the root once ``..`` and
        symlinks are followed)."""
        video = os.fspath(video)
        try:
            mode: int | None = os.lstat(video).st_mode
        except OSError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            real = os.path.realpath(video)
            return os.path.isfile(real), not self._under_root(real)
        folder = os.path.dirname(video)
        inside = self._inside.get(folder)
        if inside is None:
            inside = self._inside[folder] = self._under_root(os.path.realpath(folder or "."))
        return mode is not None and stat.S_ISREG(mode), not inside


def leaves_root(video: Path, root: Path) -> bool:
    """Whether ``video`` lies outside ``root`` once ``..`` and symlinks are followed.

    The one rule for manifest rows that training applies unless ``data.allow_outside_root``,
    and that ``rho data check`` and the importers apply too, so all three agree on every row
    (``read_manifest`` applies it through ``RowPaths``, which caches the folders).
    """
    return RowPaths(root).check(Path(video))[1]


def manifest_path(video: str | Path, folder: Path) -> str:
    """How a manifest in ``folder`` names ``video``: relative to ``folder`` when it lies under it, else absolute.

    Only ``..`` is normalised, no symlink is followed: a link keeps its own path (resolving it
    would turn a symlinked video into a second row of its target). When the two paths name the
    same places through different links (``/tmp`` and ``/private/tmp``), the video's folder is
    resolved, its file name kept.
    """
    return _ManifestPaths(folder).name(video)


class _ManifestPaths:
    """``manifest_path`` for many videos and one manifest folder, each folder resolved once (a
    folder outside the manifest's costs an ``lstat`` per path component: per row, that was a
    dozen metadata calls a row)."""

    def __init__(self, folder: Path):
        self.folder = Path(os.path.abspath(folder))
        self._real_folder: Path | None = None
        self._parents: dict[Path, Path] = {}  # a video's folder -> the same, resolved

    def name(self, video: str | Path) -> str:
        video = Path(os.path.abspath(video))
        if video.is_relative_to(self.folder):
            return video.relative_to(self.folder).as_posix()
        if self._real_folder is None:
            self._real_folder = self.folder.resolve()
        parent = self._parents.get(video.parent)
        if parent is None:
            parent = self._parents[video.parent] = video.parent.resolve()
        if parent.is_relative_to(self._real_folder):
            return (parent / video.name).relative_to(self._real_folder).as_posix()
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
    names = _ManifestPaths(path.parent)
    with atomic_file(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*REQUIRED_COLUMNS, *extra])
        writer.writeheader()
        for row in rows:
            out = dict(row)
            video = Path(str(out["path"]))
            if relative_to_manifest and video.is_absolute():
                out["path"] = names.name(video)
            writer.writerow(out)
    return path


def num_classes(entries: Sequence[VideoEntry]) -> int:
    """Number of classes a manifest spans (max label + 1)."""
    if isinstance(entries, ManifestRows):
        return int(entries.labels.max()) + 1
    return max(e.label for e in entries) + 1
