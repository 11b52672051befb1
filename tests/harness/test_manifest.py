"""Manifest reading: every bad row fails at load with its line number."""

import pytest

from harness.data.manifest import ManifestError, leaves_root, read_manifest, write_manifest


@pytest.fixture
def videos(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a", "b"):
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(b"x")
    return tmp_path


def write(path, text):
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_manifest_folder(videos, tmp_path):
    manifest = write(videos / "m.csv", "path,label,class_name\nclips/a.mp4,0,cat\nclips/b.mp4,3,dog\n")
    entries = read_manifest(manifest)
    assert [e.path for e in entries] == [videos / "clips/a.mp4", videos / "clips/b.mp4"]
    assert [e.label for e in entries] == [0, 3]
    assert entries[1].extra["class_name"] == "dog"


@pytest.mark.parametrize(
    "body, message",
    [
        ("clips/a.mp4,0\nclips/missing.mp4,1\n", r"m\.csv:3: video file .*missing\.mp4 does not exist"),
        ("clips/a.mp4,zero\n", r"m\.csv:2: label 'zero' is not an integer"),
        ("clips/a.mp4,-1\n", r"m\.csv:2: label -1 is negative"),
        ("clips/a.mp4,0\nclips/b.mp4,1\nclips/a.mp4,0\n", r"m\.csv:4: 'clips/a\.mp4' repeats line 2"),
        (",0\n", r"m\.csv:2: empty path"),
        ("", r"no rows after the header"),
    ],
)
def test_bad_rows_name_the_file_and_line(videos, body, message):
    manifest = write(videos / "m.csv", "path,label\n" + body)
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest)


def test_missing_header_and_missing_manifest(videos):
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['label'\]"):
        read_manifest(write(videos / "m.csv", "path,class\nclips/a.mp4,0\n"))
    with pytest.raises(ManifestError, match="does not exist.*rho data"):
        read_manifest(videos / "nope.csv")


def test_paths_outside_the_root_are_refused_unless_allowed(videos, tmp_path):
    outside = tmp_path.parent / "outside.mp4"
    outside.write_bytes(b"x")
    manifest = write(videos / "m.csv", f"path,label\nclips/a.mp4,0\n../{tmp_path.name}/../outside.mp4,1\n")
    assert len(read_manifest(manifest)) == 2
    with pytest.raises(ManifestError, match="m.csv:3: .*outside the data root"):
        read_manifest(manifest, allow_outside_root=False)


def test_write_manifest_makes_paths_relative_and_round_trips(videos):
    rows = [{"path": str(videos / "clips/a.mp4"), "label": 1, "class_name": "x"}]
    path = write_manifest(videos / "out.csv", rows)
    assert path.read_text().splitlines() == ["path,label,class_name", "clips/a.mp4,1,x"]
    assert read_manifest(path)[0].path == videos / "clips/a.mp4"


def test_write_manifest_keeps_a_symlink_path_and_reads_back_one_row_each(videos):
    (videos / "clips" / "link.mp4").symlink_to(videos / "clips" / "a.mp4")
    rows = [{"path": str(videos / "clips" / name), "label": 0} for name in ("a.mp4", "link.mp4")]
    rows.append({"path": str(videos / "clips" / ".." / "clips" / "b.mp4"), "label": 1})
    path = write_manifest(videos / "m.csv", rows)
    assert path.read_text().splitlines()[1:] == ["clips/a.mp4,0", "clips/link.mp4,0", "clips/b.mp4,1"]
    assert len(read_manifest(path, allow_outside_root=False)) == 3


def test_leaves_root_follows_dotdot_and_symlinks(videos, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "v.mp4"
    outside.write_bytes(b"x")
    (videos / "clips" / "out.mp4").symlink_to(outside)
    assert not leaves_root(videos / "clips" / "a.mp4", videos)
    assert leaves_root(videos / "clips" / "out.mp4", videos)
    assert leaves_root(videos / "clips" / ".." / ".." / outside.parent.name / "v.mp4", videos)
    manifest = write(videos / "m.csv", "path,label\nclips/out.mp4,0\n")
    with pytest.raises(ManifestError, match="m.csv:2: .*outside the data root.*--allow-outside-root"):
        read_manifest(manifest, allow_outside_root=False)


def test_the_manifest_check_makes_one_metadata_call_per_row(tmp_path, monkeypatch):
    """Training's manifest check (the data-root rule and file existence) costs one lstat per row and
    one path resolution per folder, not per row: counted on the real calls (a 240k-row Kinetics
    manifest has 400 folders; on NFS every metadata call is a round trip)."""
    import os

    from harness.data.manifest import read_manifest

    rows = []
    for folder in range(3):
        for index in range(50):
            video = tmp_path / f"class{folder}" / f"v{index}.mp4"
            video.parent.mkdir(exist_ok=True)
            video.touch()
            rows.append(f"class{folder}/v{index}.mp4,{folder}")
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    calls = {"stat": 0, "realpath": 0}
    real_stat, real_lstat, real_realpath = os.stat, os.lstat, os.path.realpath

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", counted("stat", real_stat))
    monkeypatch.setattr(os, "lstat", counted("stat", real_lstat))
    monkeypatch.setattr(os.path, "realpath", counted("realpath", real_realpath))
    entries = read_manifest(manifest, allow_outside_root=False)
    assert len(entries) == 150
    # one per row; resolving a folder lstats each of its components (a few dozen per folder here)
    assert calls["stat"] <= 150 + 15 * 4, calls
    assert calls["realpath"] <= 3 + 2, calls  # one per folder, and the root


def test_manifest_rows_are_columns_that_give_back_every_entry(tmp_path):
    """ManifestRows holds a manifest as a few arrays (DataLoader workers touching it copy no per-row
    objects) and gives back each row as read: path, label, extra columns (missing ones absent)."""
    import gc
    import types

    from harness.data.manifest import ManifestRows, VideoEntry

    def entries(n):
        return [
            VideoEntry(
                tmp_path / f"é{i}" / f"v{i}.mp4",
                i % 7,
                {"class_name": f"c{i % 7}", **({"start": str(i / 2), "end": str(i)} if i % 3 else {})},
            )
            for i in range(n)
        ]

    small, large = entries(30), entries(3000)
    rows = ManifestRows(large)
    assert len(rows) == 3000 and list(rows) == large
    assert rows[-1] == large[-1] and rows[4:7] == large[4:7]
    assert rows[3].window == (None, None) and rows[4].window == (2.0, 4.0)
    assert rows.labels.tolist() == [e.label for e in large]

    def tracked(obj):  # the objects the garbage collector visits (and writes to) under ``obj``
        seen, todo = set(), [obj]
        while todo:
            item = todo.pop()
            if (
                id(item) not in seen
                and gc.is_tracked(item)
                and not isinstance(item, (type, types.ModuleType))
            ):
                seen.add(id(item))
                todo.extend(gc.get_referents(item))
        return len(seen)

    # the same handful of objects whatever the number of rows (a list of entries: 3 per row)
    assert tracked(rows) <= 12 and tracked(ManifestRows(small)) <= 12
    assert tracked(large) > 3 * 3000
