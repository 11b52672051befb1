"""Importers: turn public dataset layouts (class folders, UCF101, HMDB51, Kinetics, SSv2) into manifests.

Each importer writes manifests with ``path``, ``label`` (0-based class index) and
``class_name`` columns, plus ``classes.txt`` (one class name a line, in label order) beside
them, and returns the manifest paths it wrote. Video paths under the manifest's folder are
written relative to it (symlinks keep their own path), others absolute (see
``harness.data.manifest.manifest_path``); when rows would leave the manifest's folder, which
training refuses by default, a warning says how many and how to make them acceptable. Bad
input raises ``DatasetLayoutError`` naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from harness.data.formats import VIDEO_EXTENSIONS
from harness.data.manifest import ManifestError, RowPaths, write_manifest

log = logging.getLogger(__name__)

SKIPPED_LISTED = 20  # skipped files named one by one; the rest are counted
KINETICS_PATTERNS = (
    "{youtube_id}_{start:06d}_{end:06d}.mp4",
    "{label}/{youtube_id}_{start:06d}_{end:06d}.mp4",
)


class DatasetLayoutError(ManifestError):
    """A folder tree, split file or CSV that cannot become a manifest; names the file, the line and the fix."""


def from_folders(
    root: str | Path,
    out_dir: str | Path,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[Path]:
    """Import a class-per-folder tree ``root/<class>/<video>`` (videos may sit in sub-folders).

    Classes are the folder names sorted (labels 0..K-1). A video is a file (or a symlink to
    one) whose extension, in any case, is one of ``extensions`` (with or without the dot);
    other files are skipped and a warning counts and names them. With ``val_fraction`` > 0
    each class sends that fraction of its videos (rounded, at least one, never all) to
    ``val.csv``, chosen by a ``seed``-ed shuffle, so the split is stratified and reproducible.

    Returns:
        ``[out_dir/train.csv]`` or ``[out_dir/train.csv, out_dir/val.csv]``.
    """
    root, out_dir = Path(root).absolute(), Path(out_dir).absolute()
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetLayoutError(f"val_fraction {val_fraction} must lie in [0, 1)")
    if not root.is_dir():
        raise DatasetLayoutError(
            f"{root} is not a folder; pass the folder that holds one sub-folder per class"
        )
    suffixes = sorted({e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions})
    class_dirs = sorted(
        root / entry.name
        for entry in _scan(root)
        if _is_dir(entry) and not entry.name.startswith(".") and root / entry.name != out_dir
    )
    if not class_dirs:
        raise DatasetLayoutError(
            f"{root} has no class sub-folders; lay the videos out as {root}/<class>/<video>"
        )
    rng = random.Random(seed)
    train: list[dict[str, object]] = []
    val: list[dict[str, object]] = []
    skipped: list[Path] = []
    for label, class_dir in enumerate(class_dirs):
        videos, others = _class_files(class_dir, suffixes)
        skipped += others
        if not videos:
            raise DatasetLayoutError(
                f"{class_dir} holds no videos with extensions {' '.join(suffixes)}; remove the folder "
                "or name the extensions its videos use (`rho data import folders --extensions .mts,.mp4`)"
            )
        rows = [{"path": str(v), "label": label, "class_name": class_dir.name} for v in videos]
        n_val = min(len(rows) - 1, max(1, round(len(rows) * val_fraction))) if val_fraction > 0 else 0
        rng.shuffle(rows)
        val.extend(sorted(rows[:n_val], key=lambda r: str(r["path"])))
        train.extend(sorted(rows[n_val:], key=lambda r: str(r["path"])))
    _warn_skipped(root, skipped)
    _write_classes(out_dir / "classes.txt", [d.name for d in class_dirs])
    written = [_write_manifest(out_dir / "train.csv", train)]
    if val_fraction > 0:
        written.append(_write_manifest(out_dir / "val.csv", val))
    return written


def _class_files(class_dir: Path, suffixes: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(videos, skipped files) under a class folder, each sorted; hidden files and folders are passed over.

    A symlink counts as what it points to and keeps its own path; a broken one is skipped; a
    symlink to a folder is neither entered nor counted, and an unreadable sub-folder is passed
    over (as ``Path.rglob`` does). One ``os.scandir`` per folder: its entries say from the
    directory listing itself whether each is a file or a folder, where ``rglob`` and
    ``is_dir``/``is_file`` made a few ``stat`` calls a file (on NFS or Lustre each one a round
    trip, 240k of them for Kinetics).
    """
    found: list[tuple[tuple[str, ...], bool]] = []  # (parts under class_dir, whether a video)

    def walk(folder: str, parts: tuple[str, ...]) -> None:
        try:
            entries = _scan(folder)
        except PermissionError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                if not entry.is_symlink():
                    walk(entry.path, (*parts, entry.name))
                continue
            is_video = _is_file(entry) and _suffix(entry.name).lower() in suffixes
            found.append(((*parts, entry.name), is_video))

    walk(os.fspath(class_dir), ())
    found.sort()  # the order of sorted Paths: part by part
    videos = [class_dir.joinpath(*parts) for parts, is_video in found if is_video]
    skipped = [class_dir.joinpath(*parts) for parts, is_video in found if not is_video]
    return videos, skipped


def _scan(folder: str | Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``: one ``os.scandir``, no ``stat`` of its entries."""
    with os.scandir(folder) as entries:
        return list(entries)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry`` is a folder or a symlink to one (as ``Path.is_dir``: False where it cannot be told)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """``entry`` is a file or a symlink to one (as ``Path.is_file``: False where it cannot be told)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _suffix(name: str) -> str:
    """``Path(name).suffix``, without making a Path."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


class _Listings:
    """Whether paths name files, from one ``os.scandir`` per folder rather than one ``stat`` a path.

    A split file or Kinetics CSV names each video by its path (240k of them for Kinetics, tried
    against two patterns): listing each folder once turns the per-row cost into a dict look-up.
    The answer is the one ``Path.is_file`` gives: where the listing cannot say for certain (the
    folder cannot be listed, or only a name differing in case or a non-ASCII name is missing,
    which a case- or normalisation-insensitive file system may still find) the path is asked
    directly.
    """

    def __init__(self) -> None:
        self._folders: dict[str, tuple[dict[str, os.DirEntry[str]], set[str]] | None] = {}

    def _listing(self, folder: str) -> tuple[dict[str, os.DirEntry[str]], set[str]] | None:
        if folder not in self._folders:
            try:
                entries = {entry.name: entry for entry in _scan(folder or ".")}
                self._folders[folder] = entries, {name.casefold() for name in entries}
            except (FileNotFoundError, NotADirectoryError):
                self._folders[folder] = {}, set()  # nothing under a missing folder or a file
            except OSError:
                self._folders[folder] = None  # unreadable: ask each path
        return self._folders[folder]

    def is_file(self, path: str | Path) -> bool:
        """Whether ``path`` is a file or a symlink to one."""
        path = os.fspath(path)
        folder, name = os.path.split(path)
        listing = self._listing(folder)
        if listing is not None:
            entries, folded = listing
            entry = entries.get(name)
            if entry is not None:
                return _is_file(entry)
            if name.casefold() not in folded and name.isascii():
                return False
        return os.path.isfile(path)


def _warn_skipped(root: Path, skipped: list[Path]) -> None:
    """Count and name the files of a folder tree that were not imported, and how to import them."""
    if not skipped:
        return
    by_suffix: dict[str, int] = {}
    for path in skipped:
        key = "broken symlink" if not path.exists() else (path.suffix.lower() or "no extension")
        by_suffix[key] = by_suffix.get(key, 0) + 1
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(by_suffix.items()))
    named = ", ".join(str(p.relative_to(root)) for p in skipped[:SKIPPED_LISTED])
    more = f" and {len(skipped) - SKIPPED_LISTED} more" if len(skipped) > SKIPPED_LISTED else ""
    log.warning(
        "skipped %d files under %s that are not videos (%s): %s%s; "
        "if some are, name their extensions with --extensions",
        len(skipped),
        root,
        kinds,
        named,
        more,
    )


def from_ucf101(
    video_root: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    split: int = 1,
    check_files: bool = True,
) -> list[Path]:
    """Import UCF101 with its official split ``split`` (1-3) from ``ucfTrainTestlist``.

    ``classInd.txt`` lines are ``1 ApplyEyeMakeup`` (1-based; labels here are 0-based),
    ``trainlist0N.txt`` lines ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`` and
    ``testlist0N.txt`` lines the path alone (the label comes from the class folder).

    Returns:
        ``[out_dir/train.csv, out_dir/val.csv]`` (val = the split's test list).
    """
    video_root, splits_dir, out_dir = Path(video_root).absolute(), Path(splits_dir), Path(out_dir).absolute()
    class_file = splits_dir / "classInd.txt"
    classes: list[str] = []
    for where, fields in _split_lines(class_file):
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetLayoutError(f"{where}: expected `<index> <ClassName>`, got {' '.join(fields)!r}")
        if int(fields[0]) != len(classes) + 1:
            raise DatasetLayoutError(
                f"{where}: class index {fields[0]} out of order; indices must run 1, 2, 3, ..."
            )
        classes.append(fields[1])
    label_of = {name.lower(): label for label, name in enumerate(classes)}
    listings = _Listings() if check_files else None

    def rows(list_file: Path, labelled: bool) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for where, fields in _split_lines(list_file):
            if len(fields) != (2 if labelled else 1):
                expected = "`<Class>/<video>.avi <index>`" if labelled else "`<Class>/<video>.avi`"
                raise DatasetLayoutError(f"{where}: expected {expected}, got {' '.join(fields)!r}")
            relative = fields[0]
            folder = relative.split("/")[0]
            if folder.lower() not in label_of:
                raise DatasetLayoutError(f"{where}: class folder {folder!r} is not in {class_file}")
            label = label_of[folder.lower()]
            if labelled and fields[1] != str(label + 1):
                raise DatasetLayoutError(
                    f"{where}: index {fields[1]} disagrees with {class_file}, where {folder!r} is {label + 1}"
                )
            out.append(_row(video_root / relative, label, classes[label], where, listings))
        return out

    train = rows(splits_dir / f"trainlist{split:02d}.txt", labelled=True)
    val = rows(splits_dir / f"testlist{split:02d}.txt", labelled=False)
    return _write_split(out_dir, classes, train, val)


def from_hmdb51(
    video_root: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    split: int = 1,
    check_files: bool = True,
) -> list[Path]:
    """Import HMDB51 with its official split ``split`` (1-3).

    Split files are ``<class>_test_split<N>.txt`` with lines ``<video>.avi <id>``: id 1 =
    train, 2 = test, 0 = unused. Classes are the class names sorted; videos sit at
    ``video_root/<class>/<video>``.

    Returns:
        ``[out_dir/train.csv, out_dir/val.csv]`` (val = the split's test videos).
    """
    video_root, splits_dir, out_dir = Path(video_root).absolute(), Path(splits_dir), Path(out_dir).absolute()
    suffix = f"_test_split{split}.txt"
    split_files = sorted(splits_dir.glob(f"*{suffix}"))
    if not split_files:
        raise DatasetLayoutError(
            f"{splits_dir} has no *{suffix} files; pass the folder of HMDB51's test_train_splits (split 1-3)"
        )
    classes = [f.name[: -len(suffix)] for f in split_files]
    train: list[dict[str, object]] = []
    val: list[dict[str, object]] = []
    listings = _Listings() if check_files else None
    for label, (class_name, split_file) in enumerate(zip(classes, split_files, strict=True)):
        for where, fields in _split_lines(split_file):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DatasetLayoutError(
                    f"{where}: expected `<video>.avi <0|1|2>` (0 unused, 1 train, 2 test), got {' '.join(fields)!r}"
                )
            if fields[1] == "0":
                continue
            row = _row(video_root / class_name / fields[0], label, class_name, where, listings)
            (train if fields[1] == "1" else val).append(row)
    return _write_split(out_dir, classes, train, val)


def from_kinetics(
    csv_path: str | Path,
    video_root: str | Path,
    out_path: str | Path,
    split: str | None = None,
    patterns: Sequence[str] = KINETICS_PATTERNS,
) -> list[Path]:
    """Import a Kinetics CSV (``label,youtube_id,time_start,time_end[,split]``).

    Each row's video is the first of ``patterns`` (format strings relative to ``video_root``
    with fields ``label``, ``youtube_id``, ``start``, ``end``; start/end are whole seconds)
    that names an existing file; by default ``<youtube_id>_<start:06d>_<end:06d>.mp4`` flat
    or under ``<label>/``. A pattern that names the clip by its start and end is taken for a
    trimmed 10-second clip; one that does not (e.g. ``{youtube_id}.mp4``) for the full
    YouTube video, and the row keeps ``start``/``end`` columns so sampling stays inside the
    annotated window. Rows with no video are skipped and their count logged (downloads of
    Kinetics always miss some); ``split`` keeps only rows whose ``split`` column equals it.
    Classes are all the label names in the CSV (every split) sorted, written to ``classes.txt``
    beside ``out_path``; splits imported from one CSV, or from CSVs that each name every class
    (as Kinetics' train and validate CSVs do), thus share label indices.

    Returns:
        ``[out_path]``.
    """
    csv_path, video_root, out_path = Path(csv_path), Path(video_root).absolute(), Path(out_path).absolute()
    with _open(csv_path) as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "label" not in columns:
            raise DatasetLayoutError(
                f"{csv_path}: no `label` column (header {columns!r}); Kinetics test CSVs are unlabelled: "
                "import the train or validate CSV"
            )
        missing_columns = [c for c in ("youtube_id", "time_start", "time_end") if c not in columns]
        if missing_columns:
            raise DatasetLayoutError(
                f"{csv_path}: header {columns!r} lacks {missing_columns}; is this a Kinetics CSV?"
            )
        if split is not None and "split" not in columns:
            raise DatasetLayoutError(
                f"{csv_path}: no `split` column to select split={split!r}; pass split=None"
            )
        all_records = [(f"{csv_path}:{reader.line_num}", record) for record in reader]
    classes = sorted({record["label"] for _, record in all_records if record["label"]})
    records = [(where, r) for where, r in all_records if split is None or r["split"] == split]
    if not records:
        raise DatasetLayoutError(
            f"{csv_path}: no rows" + (f" with split {split!r}" if split is not None else "")
        )
    for where, record in records:
        if None in record or None in record.values():
            raise DatasetLayoutError(f"{where}: expected {len(columns)} fields ({','.join(columns)})")
        if not record["label"]:
            raise DatasetLayoutError(f"{where}: empty label; import a labelled (train or validate) CSV")
    label_of = {name: label for label, name in enumerate(classes)}
    rows: list[dict[str, object]] = []
    seen: set[Path] = set()
    missing = duplicates = 0
    listings = _Listings()
    for where, record in records:
        fields: dict[str, object] = {
            "label": record["label"],
            "youtube_id": record["youtube_id"],
            "start": _whole_seconds(record["time_start"], where),
            "end": _whole_seconds(record["time_end"], where),
        }
        found = _find_video(video_root, patterns, fields, listings)
        if found is None:
            missing += 1
            continue
        pattern, video = found
        if video in seen:
            duplicates += 1
            continue
        seen.add(video)
        row: dict[str, object] = {
            "path": str(video),
            "label": label_of[record["label"]],
            "class_name": record["label"],
        }
        if "{start" not in pattern:
            row.update(start=fields["start"], end=fields["end"])
        rows.append(row)
    if missing:
        log.warning(
            "%s: skipped %d of %d rows whose video is not under %s",
            csv_path,
            missing,
            len(records),
            video_root,
        )
    if duplicates:
        log.warning("%s: skipped %d rows repeating a video", csv_path, duplicates)
    if not rows:
        raise DatasetLayoutError(
            f"{csv_path}: none of its {len(records)} videos found under {video_root} with patterns {list(patterns)}; "
            "check the folder or pass the file-name pattern of your download"
        )
    _write_classes(out_path.parent / "classes.txt", classes)
    return [_write_manifest(out_path, rows)]


def from_ssv2(
    labels_json: str | Path,
    split_json: str | Path,
    video_root: str | Path,
    out_path: str | Path,
    check_files: bool = True,
) -> list[Path]:
    """Import a Something-Something v2 split (``train.json`` or ``validation.json``).

    ``labels.json`` maps each template ("Holding something next to something") to its index
    (a string); split entries are ``{"id": "78687", "template": "Holding [something] next to
    [something]", ...}``, the class being the template without brackets. Videos are
    ``video_root/<id>.webm``. ``classes.txt`` (label order) is written beside ``out_path``.

    Returns:
        ``[out_path]``.
    """
    labels_json, split_json = Path(labels_json), Path(split_json)
    video_root, out_path = Path(video_root).absolute(), Path(out_path).absolute()
    label_map = _load_json(labels_json, dict, 'an object {"<template>": "<index>", ...}')
    try:
        label_of = {name: int(index) for name, index in label_map.items()}
    except (TypeError, ValueError):
        raise DatasetLayoutError(
            f'{labels_json}: every value must be an integer index such as "12"'
        ) from None
    classes = sorted(label_of, key=label_of.__getitem__)
    if sorted(label_of.values()) != list(range(len(classes))):
        raise DatasetLayoutError(f"{labels_json}: indices must be 0..{len(classes) - 1}, each once")
    entries = _load_json(split_json, list, 'a list of {"id": ..., "template": ...} objects')
    rows: list[dict[str, object]] = []
    listings = _Listings() if check_files else None
    for number, entry in enumerate(entries):
        where = f"{split_json}: entry {number}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise DatasetLayoutError(f"{where}: expected an object with an `id`, got {entry!r}")
        if "template" not in entry:
            raise DatasetLayoutError(
                f"{where}: no `template` (SSv2 test.json is unlabelled); import train or validation"
            )
        class_name = str(entry["template"]).replace("[", "").replace("]", "")
        if class_name not in label_of:
            raise DatasetLayoutError(
                f"{where} (id {entry['id']}): template {class_name!r} is not a key of {labels_json}"
            )
        rows.append(
            _row(video_root / f"{entry['id']}.webm", label_of[class_name], class_name, where, listings)
        )
    if not rows:
        raise DatasetLayoutError(f"{split_json}: no entries")
    _write_classes(out_path.parent / "classes.txt", classes)
    return [_write_manifest(out_path, rows)]


def _split_lines(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield (``file:line``, whitespace-split fields) for each non-blank line of a split file."""
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"{path}:{number}", line.split()


def _find_video(
    video_root: Path, patterns: Sequence[str], fields: dict[str, object], listings: _Listings
) -> tuple[str, Path] | None:
    """The first (pattern, file) whose formatted path exists under ``video_root``, else None."""
    for pattern in patterns:
        video = video_root / pattern.format(**fields)
        if listings.is_file(video):
            return pattern, video
    return None


def _open(path: Path) -> TextIO:
    if not path.is_file():
        raise DatasetLayoutError(
            f"{path} does not exist; pass the folder or file of the dataset's annotations"
        )
    return path.open(newline="", encoding="utf-8")


def _row(
    video: Path, label: int, class_name: str, where: str, listings: _Listings | None
) -> dict[str, object]:
    """A manifest row; with ``listings`` (``check_files``) only for a video that exists."""
    if listings is not None and not listings.is_file(video):
        raise DatasetLayoutError(
            f"{where}: video {video} does not exist; check the video folder (or pass check_files=False)"
        )
    return {"path": str(video), "label": label, "class_name": class_name}


def _whole_seconds(value: str, where: str) -> int:
    try:
        seconds = float(value)
    except ValueError:
        raise DatasetLayoutError(f"{where}: time {value!r} is not a number of seconds") from None
    if not seconds.is_integer() or seconds < 0:
        raise DatasetLayoutError(f"{where}: time {value!r} is not a whole, non-negative number of seconds")
    return int(seconds)


def _load_json(path: Path, kind: type, shape: str) -> dict | list:
    with _open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DatasetLayoutError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, kind):
        raise DatasetLayoutError(f"{path}: expected {shape}")
    return data


def _write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    """Write a manifest, and warn when rows lie outside its folder, which training refuses by default.

    The rows that would be refused are found with ``RowPaths`` (``leaves_root``), the rule
    training and ``rho data check`` apply, so the warning names exactly the rows they would
    refuse; one ``RowPaths`` for all rows resolves each folder once (one ``lstat`` a row).
    """
    written = write_manifest(path, rows)
    rows_paths = RowPaths(path.parent)
    outside = [row["path"] for row in rows if rows_paths.check(str(row["path"]))[1]]
    if outside:
        log.warning(
            "%s: %d of %d videos lie outside the manifest's folder %s (e.g. %s), which training and "
            "`rho data check` refuse by default; write the manifest into the dataset's folder "
            "(or a folder above it; a symlink out of it needs its target moved in), or set data.allow_outside_root: true "
            "(`rho data check --allow-outside-root`)",
            path,
            len(outside),
            len(rows),
            path.parent,
            outside[0],
        )
    return written


def _write_split(
    out_dir: Path, classes: Iterable[str], train: list[dict[str, object]], val: list[dict[str, object]]
) -> list[Path]:
    """``out_dir/classes.txt`` and the manifests ``out_dir/train.csv`` and ``out_dir/val.csv``, in that order."""
    _write_classes(out_dir / "classes.txt", classes)
    return [_write_manifest(out_dir / "train.csv", train), _write_manifest(out_dir / "val.csv", val)]


def _write_classes(path: Path, names: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names))
