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
