"""Importers turn fake UCF101/HMDB51/Kinetics/SSv2 layouts and class folders into manifests.

Layout tests use empty stand-in files (importers never decode); the class-folder tests that
follow a manifest into ``rho data check`` and the training dataset use real H.264 files.
"""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data import importers
from harness.data.importers import DatasetLayoutError
from harness.data.manifest import ManifestError, read_manifest


def touch(path: Path) -> Path:
    """An empty stand-in for a video: importers never decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def raw_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


def labels_by_name(manifest: Path) -> dict[str, int]:
    return {entry.path.name: entry.label for entry in read_manifest(manifest)}


# -- class folders -------------------------------------------------------------------------


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name, count in (("walk", 4), ("jump", 6), ("run", 2)):
        for i in range(count):
            touch(root / name / f"{name}{i}.mp4")
    touch(root / "run" / "sub" / "run_nested.MKV")
    touch(root / "run" / "notes.txt")
    return root


def test_folders_labels_follow_sorted_class_names(folder_tree):
    written = importers.from_folders(folder_tree, folder_tree)
    assert written == [folder_tree / "train.csv"]
    assert (folder_tree / "classes.txt").read_text().splitlines() == ["jump", "run", "walk"]
    labels = labels_by_name(folder_tree / "train.csv")
    assert len(labels) == 13  # notes.txt is not a video; the nested .MKV is
    assert labels["jump0.mp4"] == 0 and labels["run_nested.MKV"] == 1 and labels["walk3.mp4"] == 2
    rows = raw_rows(folder_tree / "train.csv")
    assert rows[0]["path"] == "jump/jump0.mp4" and rows[0]["class_name"] == "jump"


def test_folders_val_split_is_stratified_and_deterministic(folder_tree, tmp_path):
    train, val = importers.from_folders(folder_tree, tmp_path / "a", val_fraction=0.25, seed=3)
    val_labels = sorted(labels_by_name(val).values())
    assert val_labels == [0, 0, 1, 2]  # jump 6 -> 2 (rounded 1.5), run 3 -> 1, walk 4 -> 1
    assert not set(labels_by_name(train)) & set(labels_by_name(val))
    again = importers.from_folders(folder_tree, tmp_path / "b", val_fraction=0.25, seed=3)
    assert [p.read_text() for p in again] == [train.read_text(), val.read_text()]
    assert Path(raw_rows(val)[0]["path"]).is_absolute()  # videos outside the manifest's folder


def test_folders_ignores_its_own_output_folder(folder_tree):
    out = folder_tree / "manifests"
    importers.from_folders(folder_tree, out)
    importers.from_folders(folder_tree, out)
    assert (out / "classes.txt").read_text().splitlines() == ["jump", "run", "walk"]


def test_folders_errors(folder_tree, tmp_path):
    (folder_tree / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty holds no videos"):
        importers.from_folders(folder_tree, tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        importers.from_folders(folder_tree, tmp_path, val_fraction=1.0)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        importers.from_folders(tmp_path / "nowhere", tmp_path)


# -- UCF101 --------------------------------------------------------------------------------


@pytest.fixture
def ucf(tmp_path: Path) -> tuple[Path, Path]:
    videos, splits = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
    )
    (splits / "testlist01.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n\r\n")
    for name in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi",
    ):
        touch(videos / name)
    return videos, splits


def test_ucf101_split(ucf, tmp_path):
    videos, splits = ucf
    train, val = importers.from_ucf101(videos, splits, videos, split=1)
    assert (train.name, val.name) == ("train.csv", "val.csv")
    assert labels_by_name(train) == {"v_ApplyEyeMakeup_g08_c01.avi": 0, "v_HandStandPushups_g08_c01.avi": 1}
    assert labels_by_name(val) == {"v_HandStandPushups_g01_c01.avi": 1}
    assert raw_rows(val)[0]["path"] == "HandstandPushups/v_HandStandPushups_g01_c01.avi"
    assert (videos / "classes.txt").read_text() == "ApplyEyeMakeup\nHandstandPushups\n"


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("classInd.txt", "1 ApplyEyeMakeup\n2\n", r"classInd.txt:2: expected `<index> <ClassName>`"),
        (
            "classInd.txt",
            "1 ApplyEyeMakeup\n3 HandstandPushups\n",
            r"classInd.txt:2: class index 3 out of order",
        ),
        (
            "trainlist01.txt",
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n",
            r"trainlist01.txt:1: index 2 disagrees",
        ),
        ("testlist01.txt", "\nApplyEyeMakeup/a.avi 1\n", r"testlist01.txt:2: expected `<Class>/<video>.avi`"),
        ("testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\n", r"testlist01.txt:1: class folder 'Juggling'"),
    ],
)
def test_ucf101_malformed_lines_name_file_and_line(ucf, tmp_path, file, text, message):
    videos, splits = ucf
    (splits / file).write_text(text)
    with pytest.raises(DatasetLayoutError, match=message):
        importers.from_ucf101(videos, splits, tmp_path / "out")


def test_ucf101_missing_video(ucf, tmp_path):
    videos, splits = ucf
    (videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi").unlink()
    with pytest.raises(DatasetLayoutError, match=r"trainlist01.txt:1: video .* does not exist"):
        importers.from_ucf101(videos, splits, tmp_path / "out")
    train, _ = importers.from_ucf101(videos, splits, tmp_path / "out", check_files=False)
    assert len(raw_rows(train)) == 2


def test_ucf101_missing_split_file(ucf, tmp_path):
    videos, splits = ucf
    with pytest.raises(DatasetLayoutError, match="trainlist02.txt does not exist"):
        importers.from_ucf101(videos, splits, tmp_path / "out", split=2)


# -- HMDB51 --------------------------------------------------------------------------------


@pytest.fixture
def hmdb(tmp_path: Path) -> tuple[Path, Path]:
    videos, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("wave_a.avi 1 \nwave_b.avi 2 \nwave_c.avi 0 \n")
    (splits / "brush_hair_test_split1.txt").write_text("brush_a.avi 2\nbrush_b.avi 1\n")
    (splits / "brush_hair_test_split2.txt").write_text("brush_a.avi 1\nbrush_b.avi 2\n")
    for name in ("wave/wave_a.avi", "wave/wave_b.avi", "brush_hair/brush_a.avi", "brush_hair/brush_b.avi"):
        touch(videos / name)
    return videos, splits


def test_hmdb51_split(hmdb, tmp_path):
    videos, splits = hmdb
    train, val = importers.from_hmdb51(videos, splits, tmp_path / "out", split=1)
    assert labels_by_name(train) == {"brush_b.avi": 0, "wave_a.avi": 1}
    assert labels_by_name(val) == {"brush_a.avi": 0, "wave_b.avi": 1}  # wave_c (id 0) unused
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == ["brush_hair", "wave"]


def test_hmdb51_errors(hmdb, tmp_path):
    videos, splits = hmdb
    (splits / "wave_test_split1.txt").write_text("wave_a.avi 1\nwave_b.avi 3\n")
    with pytest.raises(DatasetLayoutError, match=r"wave_test_split1.txt:2: expected `<video>.avi <0\|1\|2>`"):
        importers.from_hmdb51(videos, splits, tmp_path / "out")
    with pytest.raises(DatasetLayoutError, match=r"no \*_test_split3.txt files"):
        importers.from_hmdb51(videos, splits, tmp_path / "out", split=3)


# -- Kinetics ------------------------------------------------------------------------------

KINETICS_CSV = """label,youtube_id,time_start,time_end,split
riding a bike,aaa,10,20,train
abseiling,bbb,0,10,train
abseiling,ccc,5,15,train
zumba,ddd,30,40,val
"""


@pytest.fixture
def kinetics(tmp_path: Path) -> tuple[Path, Path]:
    videos = tmp_path / "k400"
    touch(videos / "aaa_000010_000020.mp4")  # flat
    touch(videos / "abseiling" / "bbb_000000_000010.mp4")  # under its label
    touch(videos / "zumba" / "ddd_000030_000040.mp4")  # ccc was never downloaded
    (tmp_path / "train.csv").write_text(KINETICS_CSV)
    return tmp_path / "train.csv", videos


def test_kinetics_finds_flat_and_label_folder_files_and_counts_missing(kinetics, caplog):
    csv_path, videos = kinetics
    with caplog.at_level(logging.WARNING, logger="harness.data.importers"):
        (manifest,) = importers.from_kinetics(csv_path, videos, videos / "train_manifest.csv")
    assert "skipped 1 of 4 rows" in caplog.text
    assert (videos / "classes.txt").read_text().splitlines() == ["abseiling", "riding a bike", "zumba"]
    rows = raw_rows(manifest)
    assert [(r["path"], r["label"], r["class_name"]) for r in rows] == [
        ("aaa_000010_000020.mp4", "1", "riding a bike"),
        ("abseiling/bbb_000000_000010.mp4", "0", "abseiling"),
        ("zumba/ddd_000030_000040.mp4", "2", "zumba"),
    ]
    assert "start" not in rows[0]  # trimmed clips: the whole file is the annotated window
    assert len(read_manifest(manifest)) == 3


def test_kinetics_split_filter_keeps_the_csv_wide_class_indices(kinetics, tmp_path):
    csv_path, videos = kinetics
    (manifest,) = importers.from_kinetics(csv_path, videos, tmp_path / "val.csv", split="val")
    assert labels_by_name(manifest) == {"ddd_000030_000040.mp4": 2}
    assert (tmp_path / "classes.txt").read_text().splitlines() == ["abseiling", "riding a bike", "zumba"]


def test_kinetics_untrimmed_pattern_keeps_window(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end\nzumba,ddd,30.0,40\n")
    touch(tmp_path / "full" / "ddd.mkv")
    (manifest,) = importers.from_kinetics(
        tmp_path / "k.csv", tmp_path / "full", tmp_path / "m.csv", patterns=("{youtube_id}.mkv",)
    )
    (entry,) = read_manifest(manifest)
    assert entry.window == (30.0, 40.0)


def test_kinetics_errors(kinetics, tmp_path):
    csv_path, videos = kinetics
    with pytest.raises(DatasetLayoutError, match="none of its 4 videos found"):
        importers.from_kinetics(csv_path, tmp_path / "empty", tmp_path / "m.csv")
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\naaa,10,20,test\n")
    with pytest.raises(DatasetLayoutError, match="no `label` column"):
        importers.from_kinetics(tmp_path / "test.csv", videos, tmp_path / "m.csv")
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end\nzumba,ddd,30,forty\n")
    with pytest.raises(DatasetLayoutError, match=r"bad.csv:2: time 'forty'"):
        importers.from_kinetics(tmp_path / "bad.csv", videos, tmp_path / "m.csv")
    (tmp_path / "short.csv").write_text("label,youtube_id,time_start,time_end\nzumba,ddd,30\n")
    with pytest.raises(DatasetLayoutError, match=r"short.csv:2: expected 4 fields"):
        importers.from_kinetics(tmp_path / "short.csv", videos, tmp_path / "m.csv")
    (tmp_path / "nosplit.csv").write_text("label,youtube_id,time_start,time_end\nzumba,ddd,30,40\n")
    with pytest.raises(DatasetLayoutError, match="no `split` column"):
        importers.from_kinetics(tmp_path / "nosplit.csv", videos, tmp_path / "m.csv", split="train")


# -- Something-Something v2 ----------------------------------------------------------------


@pytest.fixture
def ssv2(tmp_path: Path) -> tuple[Path, Path, Path]:
    labels = {"Holding something next to something": "1", "Approaching something with your camera": "0"}
    entries = [
        {
            "id": "78687",
            "label": "holding a cup next to a pen",
            "template": "Holding [something] next to [something]",
        },
        {"id": "42", "label": "approaching a cup", "template": "Approaching [something] with your camera"},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "train.json").write_text(json.dumps(entries))
    videos = tmp_path / "20bn-something-something-v2"
    touch(videos / "78687.webm")
    touch(videos / "42.webm")
    return tmp_path / "labels.json", tmp_path / "train.json", videos


def test_ssv2_labels_from_templates(ssv2, tmp_path):
    labels, split, videos = ssv2
    (manifest,) = importers.from_ssv2(labels, split, videos, videos / "train.csv")
    assert labels_by_name(manifest) == {"78687.webm": 1, "42.webm": 0}
    assert raw_rows(manifest)[0]["class_name"] == "Holding something next to something"
    assert (videos / "classes.txt").read_text().splitlines() == [
        "Approaching something with your camera",
        "Holding something next to something",
    ]


def test_ssv2_errors(ssv2, tmp_path):
    labels, split, videos = ssv2
    split.write_text(json.dumps([{"id": "1", "template": "Holding [something]"}]))
    with pytest.raises(
        DatasetLayoutError, match=r"train.json: entry 0 \(id 1\): template 'Holding something'"
    ):
        importers.from_ssv2(labels, split, videos, tmp_path / "m.csv")
    split.write_text(json.dumps([{"id": "1"}]))
    with pytest.raises(DatasetLayoutError, match="no `template`"):
        importers.from_ssv2(labels, split, videos, tmp_path / "m.csv")
    split.write_text('[{"id": "1",}]')
    with pytest.raises(DatasetLayoutError, match=r"train.json:1: not valid JSON"):
        importers.from_ssv2(labels, split, videos, tmp_path / "m.csv")
    split.write_text(json.dumps([{"id": "7", "template": "Holding [something] next to [something]"}]))
    with pytest.raises(DatasetLayoutError, match=r"entry 0: video .*7.webm does not exist"):
        importers.from_ssv2(labels, split, videos, tmp_path / "m.csv")
    (manifest,) = importers.from_ssv2(labels, split, videos, tmp_path / "m.csv", check_files=False)
    assert [row["path"] for row in raw_rows(manifest)] == ["20bn-something-something-v2/7.webm"]


# -- class folders of real videos: what the importer writes, check and training accept -------


def training_dataset(manifest: Path, *overrides: str):
    """The pretraining dataset ``rho pretrain`` would build for ``manifest`` (its root rules included)."""
    from harness.config import load_experiment
    from harness.train import train_dataset

    tree = {"clips": 2, "frames": 2, "stride": 2, "crop": 16, "batch_size": 1, "workers": 0}
    experiment = load_experiment(
        None, [f"data.{key}={value}" for key, value in tree.items()] + [f"data.train={manifest}", *overrides]
    )
    return train_dataset(experiment)


def run_rho(*args: str) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True)


@pytest.fixture
def video_tree(index_videos, tmp_path: Path) -> Path:
    """``data/<class>/`` with real H.264 files under common extensions (an mp4 container suits each)."""
    root = tmp_path / "data"
    source = index_videos["short"].read_bytes()
    for relative in ("walk/a.mp4", "walk/b.m4v", "jump/c.3gp", "jump/d.MOV", "jump/deep/e.mkv"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(source)
    (root / "walk" / "notes.txt").write_text("not a video")
    return root


def test_imported_manifest_is_accepted_as_written_by_check_and_training(video_tree):
    out = run_rho("data", "import", "folders", str(video_tree), str(video_tree))
    assert out.returncode == 0, out.stderr
    manifest = video_tree / "train.csv"
    assert [row["path"] for row in raw_rows(manifest)] == [
        "jump/c.3gp",
        "jump/d.MOV",
        "jump/deep/e.mkv",
        "walk/a.mp4",
        "walk/b.m4v",
    ]
    assert "outside" not in out.stderr
    checked = run_rho("data", "check", str(manifest))
    assert checked.returncode == 0 and "5 of 5 videos ok" in checked.stdout, checked.stderr
    dataset = training_dataset(manifest)
    assert len(dataset) == 5 and dataset[4]["label"] == 1 and dataset[4]["skipped"] == 0


def test_symlink_inside_a_class_folder_keeps_its_own_path(video_tree):
    (video_tree / "walk" / "again.mp4").symlink_to(video_tree / "walk" / "a.mp4")
    (manifest,) = importers.from_folders(video_tree, video_tree)
    paths = [row["path"] for row in raw_rows(manifest)]
    assert "walk/again.mp4" in paths and paths.count("walk/a.mp4") == 1
    assert run_rho("data", "check", str(manifest)).returncode == 0
    assert len(training_dataset(manifest)) == 6


def test_symlink_out_of_root_is_refused_alike_by_check_and_training(video_tree, index_videos, caplog):
    (video_tree / "jump" / "out.mp4").symlink_to(index_videos["long"])
    with caplog.at_level(logging.WARNING):
        (manifest,) = importers.from_folders(video_tree, video_tree)
    assert "1 of 6 videos lie outside the manifest's folder" in caplog.text
    assert "data.allow_outside_root: true" in caplog.text
    assert "jump/out.mp4" in [row["path"] for row in raw_rows(manifest)]  # the link, not its target
    checked = run_rho("data", "check", str(manifest))
    with pytest.raises(ManifestError) as refused:
        training_dataset(manifest)
    assert checked.returncode == 2
    assert checked.stderr.strip() == f"rho: error: {refused.value}"
    assert "manifest's folder" not in checked.stderr and "jump/out.mp4" in checked.stderr
    allowed = run_rho("data", "check", str(manifest), "--allow-outside-root")
    assert allowed.returncode == 0 and "6 of 6 videos ok" in allowed.stdout
    assert len(training_dataset(manifest, "data.allow_outside_root=true")) == 6


def test_manifest_outside_the_dataset_says_how_to_make_it_acceptable(video_tree, tmp_path):
    out = run_rho("data", "import", "folders", str(video_tree), str(tmp_path / "manifests"))
    assert out.returncode == 0
    assert "5 of 5 videos lie outside the manifest's folder" in out.stderr
    assert "write the manifest into the dataset's folder" in out.stderr
    manifest = tmp_path / "manifests" / "train.csv"
    assert all(Path(row["path"]).is_absolute() for row in raw_rows(manifest))
    with pytest.raises(ManifestError, match="outside the data root"):
        training_dataset(manifest)
    assert len(training_dataset(manifest, "data.allow_outside_root=true")) == 5


def test_folders_skipped_files_are_counted_and_named(video_tree):
    (video_tree / "jump" / "broken.mp4").symlink_to(video_tree / "nowhere.mp4")
    (video_tree / "jump" / ".DS_Store").write_text("finder")
    out = run_rho("data", "import", "folders", str(video_tree), str(video_tree))
    assert out.returncode == 0, out.stderr
    assert "skipped 2 files" in out.stderr and "(1 .txt, 1 broken symlink)" in out.stderr
    assert "walk/notes.txt" in out.stderr and "jump/broken.mp4" in out.stderr
    assert ".DS_Store" not in out.stderr  # hidden files are no one's videos
    assert "--extensions" in out.stderr


def test_folders_common_extensions_are_videos(tmp_path):
    for extension in importers.VIDEO_EXTENSIONS:
        touch(tmp_path / "data" / "any" / f"clip{extension.upper()}")
    (manifest,) = importers.from_folders(tmp_path / "data", tmp_path / "data")
    assert len(raw_rows(manifest)) == len(importers.VIDEO_EXTENSIONS)
    assert {".m4v", ".3gp", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".ogv", ".avi"} <= set(
        importers.VIDEO_EXTENSIONS
    )


def test_extensions_option_named_in_the_error_exists(tmp_path):
    touch(tmp_path / "data" / "cam" / "clip.mts2")
    refused = run_rho("data", "import", "folders", str(tmp_path / "data"), str(tmp_path / "data"))
    assert refused.returncode == 2 and "--extensions" in refused.stderr, refused.stderr
    assert refused.stderr.startswith("rho: error: ") and refused.stderr.count("\n") == 1
    accepted = run_rho(
        "data",
        "import",
        "folders",
        str(tmp_path / "data"),
        str(tmp_path / "data"),
        "--extensions",
        "MTS2,.mp4",
    )
    assert accepted.returncode == 0, accepted.stderr
    assert [row["path"] for row in raw_rows(tmp_path / "data" / "train.csv")] == ["cam/clip.mts2"]
    empty = run_rho("data", "import", "folders", str(tmp_path / "data"), str(tmp_path), "--extensions", ",")
    assert empty.returncode == 2 and "at least one extension" in empty.stderr
