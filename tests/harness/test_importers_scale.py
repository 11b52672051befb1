"""The importers' metadata calls: one ``os.scandir`` per folder and at most one ``lstat`` per row.

A 240k-video Kinetics download in 400 class folders sits on NFS or Lustre, where every
metadata call is a round trip. The calls are counted on real files at N and 4N videos: what 3N
more rows add must be at most one ``stat``/``lstat`` each, and the folders listed stay the same.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.data.importers import from_folders, from_kinetics, from_ucf101

CLASSES = 3
N = 20  # videos per class at the smaller size


class Calls:
    """Counts of the metadata calls made through the ``os`` module while counting is on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.stat = self.scandir = 0
        self.on = False
        for name in ("stat", "lstat", "scandir"):
            monkeypatch.setattr(os, name, self._counted(name, getattr(os, name)))

    def _counted(self, name: str, function: Callable) -> Callable:
        def call(*args, **kwargs):
            if self.on:
                if name == "scandir":
                    self.scandir += 1
                else:
                    self.stat += 1
            return function(*args, **kwargs)

        return call

    def of(self, function: Callable[[], object]) -> tuple[int, int]:
        """(stat + lstat calls, scandir calls) that ``function()`` makes."""
        self.stat = self.scandir = 0
        self.on = True
        try:
            function()
        finally:
            self.on = False
        return self.stat, self.scandir


def _videos(root: Path, per_class: int, nested: bool = False) -> list[tuple[str, str]]:
    """``root/<class>/v<i>.mp4`` empty files (the importers read names and metadata only), a
    ``sub/`` folder in each class when ``nested``; returns (class, name) pairs."""
    made = []
    for c in range(CLASSES):
        folder = root / f"class{c}"
        (folder / "sub").mkdir(parents=True)
        for i in range(per_class):
            name = f"v{i:04d}.mp4"
            (folder / "sub" / name if nested and i % 2 else folder / name).touch()
            made.append((f"class{c}", name))
        (folder / "notes.txt").touch()
    return made


def _folders(root: Path, per_class: int, out: Path) -> Callable[[], object]:
    _videos(root, per_class, nested=True)
    return lambda: from_folders(root, out, val_fraction=0.2)


def _kinetics(root: Path, per_class: int, out: Path) -> Callable[[], object]:
    rows = ["label,youtube_id,time_start,time_end,split"]
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class + 2):  # two rows a class with no video
            if i < per_class:
                (root / f"class{c}" / f"y{c}x{i:04d}_000010_000020.mp4").touch()
            rows.append(f"class{c},y{c}x{i:04d},10,20,train")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return lambda: from_kinetics(root / "train.csv", root, out / "train.csv")


def _ucf101(root: Path, per_class: int, out: Path) -> Callable[[], object]:
    made = _videos(root, per_class)
    splits = root / "splits"
    splits.mkdir()
    (splits / "classInd.txt").write_text("".join(f"{c + 1} class{c}\n" for c in range(CLASSES)))
    (splits / "trainlist01.txt").write_text(
        "".join(f"{folder}/{name} {int(folder[5:]) + 1}\n" for folder, name in made[::2])
    )
    (splits / "testlist01.txt").write_text("".join(f"{folder}/{name}\n" for folder, name in made[1::2]))
    return lambda: from_ucf101(root, splits, out)


@pytest.mark.parametrize("importer", [_folders, _kinetics, _ucf101])
@pytest.mark.parametrize("inside", [True, False], ids=["manifest-in-dataset", "manifest-elsewhere"])
def test_importers_make_one_stat_per_row_and_list_each_folder_once(tmp_path, monkeypatch, importer, inside):
    """Old code: ~15 stat calls a row (``rglob`` + ``is_dir``/``is_file``, a ``stat`` per pattern,
    and a fresh resolution of the manifest's folder and the video's folder for each row)."""
    calls = Calls(monkeypatch)
    counts = {}
    for size in (N, 4 * N):
        root = tmp_path / f"data{size}"
        out = root if inside else tmp_path / f"out{size}"
        counts[size] = calls.of(importer(root, size, out))
        with (out / "train.csv").open(newline="") as handle:
            assert len(list(csv.DictReader(handle))) > 0
    (stat_n, scandir_n), (stat_4n, scandir_4n) = counts[N], counts[4 * N]
    # Resolving a folder lstats each component of its path, for the data-root rule and (manifest
    # elsewhere) for naming its rows, once per manifest written; which folders a manifest's rows
    # use (train or val) varies with the size, not how often.
    folders, per_folder = 2 * CLASSES + 1, 4 * (len(tmp_path.parts) + 3)
    added_rows = CLASSES * 3 * N
    assert stat_4n - stat_n <= added_rows + folders * per_folder, counts  # at most one stat a row
    assert stat_4n <= 4 * CLASSES * N + folders * per_folder + 20, counts
    # once per folder, whatever the rows (and the writes' own look for stale temporary files)
    assert scandir_4n == scandir_n <= folders + 2, counts


def test_listing_answers_as_is_file_does(tmp_path):
    """The folder listings give ``Path.is_file``'s answer: files and symlinks to files yes; folders,
    broken symlinks, missing names and names under a missing folder or a file no."""
    from harness.data.importers import _Listings

    (tmp_path / "a.mp4").touch()
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.mp4")
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    listings = _Listings()
    names = ["a.mp4", "folder.mp4", "link.mp4", "broken.mp4", "none.mp4", "no/a.mp4", "a.mp4/x.mp4", "A.MP4"]
    for name in names:
        assert listings.is_file(tmp_path / name) == (tmp_path / name).is_file(), name
