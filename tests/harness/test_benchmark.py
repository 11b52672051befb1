"""Benchmark files: loading, validation errors that name file/key/value, ${VAR} expansion."""

from pathlib import Path

import pytest
import yaml

from harness.eval import (
    PROTOCOLS,
    AttentiveSpec,
    FinetuneSpec,
    KnnSpec,
    LinearSlowFastSpec,
    LinearSpec,
    load_benchmark,
)
from harness.eval.spec import PROTOCOL_SPECS
from harness.schema import ConfigError, expand_env

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.yaml"))
MANIFESTS = ["synth", "synth_constant", "ucf101/split1", "hmdb51/split1", "kinetics400"]


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """RHO_DATA pointing at a folder with (empty) train/val manifests of every shipped benchmark."""
    for folder in MANIFESTS:
        for split in ("train", "val"):
            path = tmp_path / "data" / folder / f"{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("path,label\n")
    monkeypatch.setenv("RHO_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def write(tmp_path: Path, text: str, name: str = "bench.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """
name: tiny
dataset: synthetic
protocol: linear
train: ${RHO_DATA}/synth/train.csv
val: ${RHO_DATA}/synth/val.csv
views: {frames: 4, stride: 2, crop: 32, test_temporal: 2, test_spatial: 3}
linear: {epochs: 5, lr: 0.2, weight_decay: 1e-4}
"""


def test_a_good_file_loads_with_defaults_filled(tmp_path, data_root):
    benchmark = load_benchmark(write(tmp_path, GOOD))
    assert (benchmark.name, benchmark.dataset, benchmark.protocol) == ("tiny", "synthetic", "linear")
    assert (
        benchmark.train == data_root / "synth" / "train.csv"
        and benchmark.val == data_root / "synth" / "val.csv"
    )
    assert (benchmark.views.frames, benchmark.views.crop, benchmark.views.short_side) == (4, 32, None)
    assert (benchmark.views.test_temporal, benchmark.views.test_spatial, benchmark.views.train_temporal) == (
        2,
        3,
        1,
    )
    assert benchmark.settings == LinearSpec(epochs=5, lr=0.2, weight_decay=1e-4)  # "1e-4" read as a number
    assert benchmark.metric("top1") == "eval.tiny.linear.top1"


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_every_shipped_benchmark_loads(path, data_root):
    benchmark = load_benchmark(path)
    assert isinstance(
        benchmark.settings,
        {
            "linear": LinearSpec,
            "linear_slowfast": LinearSlowFastSpec,
            "knn": KnnSpec,
            "finetune": FinetuneSpec,
            "attentive": AttentiveSpec,
        }[benchmark.protocol],
    )
    assert benchmark.train.is_relative_to(data_root) and benchmark.val.is_relative_to(data_root)


def test_paper_benchmarks_use_the_papers_views(data_root):
    k400 = load_benchmark(REPO / "benchmarks" / "k400_linear.yaml")
    views = k400.views
    assert (views.frames, views.fps, views.stride, views.crop, views.short_side) == (8, 30, 9, 224, 256)
    assert (views.test_temporal, views.test_spatial) == (10, 3)
    ucf = load_benchmark(REPO / "benchmarks" / "ucf101_split1_finetune.yaml").settings
    assert (ucf.epochs, ucf.lr, ucf.batch_size, ucf.weight_decay, ucf.dropout) == (200, 0.005, 64, 1e-4, 0.5)
    # Every full-scale benchmark samples its clips as the full-scale pretraining does (SlowFast's
    # 8x8: NUM_FRAMES 8, SAMPLING_RATE 8 at TARGET_FPS 30, every 9th frame of a 30 fps grid).
    pretraining = yaml.safe_load((REPO / "studies/experiments/k400_slow_r50.yaml").read_text())["data"]
    assert (pretraining["frames"], pretraining["fps"], pretraining["stride"]) == (8, 30, 9)
    for name in (
        "k400_linear",
        "k400_knn",
        "k400_linear_slowfast",
        "ucf101_split1_linear",
        "ucf101_split1_finetune",
        "hmdb51_split1_finetune",
    ):
        v = load_benchmark(REPO / "benchmarks" / f"{name}.yaml").views
        assert (v.frames, v.fps, v.stride) == (8, 30, 9), name


def test_unknown_keys_get_a_suggestion_and_the_file_name(tmp_path, data_root):
    path = write(tmp_path, GOOD.replace("views: {frames: 4", "views: {frame: 4"))
    with pytest.raises(
        ConfigError, match=r"bench.yaml: views.frame = 4 is not allowed: .*did you mean views.frames"
    ):
        load_benchmark(path)
    with pytest.raises(ConfigError, match=r"protcol = 'linear' .*did you mean protocol"):
        load_benchmark(write(tmp_path, GOOD.replace("protocol:", "protcol:")))


def test_bad_protocol_and_foreign_sections_are_refused(tmp_path, data_root):
    with pytest.raises(
        ConfigError,
        match=r"protocol = 'linaer' .*did you mean 'linear'\? one of linear, linear_slowfast, knn, finetune, attentive",
    ):
        load_benchmark(write(tmp_path, GOOD.replace("protocol: linear", "protocol: linaer")))
    with pytest.raises(ConfigError, match=r"linear = .*only the section of the protocol \(knn\)"):
        load_benchmark(write(tmp_path, GOOD.replace("protocol: linear", "protocol: knn")))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("lr: 0.2", "lr: -1", r"bench.yaml: linear.lr = -1.0 is not allowed: must be > 0"),
        ("test_spatial: 3", "test_spatial: 2", r"views.test_spatial = 2 .*1 \(centre crop\) or 3"),
        ("name: tiny", "name: 'a b'", r"name = 'a b' .*letters, digits"),
        ("dataset: synthetic", "dataset: kinetcs400", r"did you mean 'kinetics400'"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(tmp_path, data_root, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_benchmark(write(tmp_path, GOOD.replace(old, new)))


def test_nested_augment_keeps_the_other_finetune_defaults(tmp_path, data_root):
    text = GOOD.replace("protocol: linear", "protocol: finetune").replace(
        "linear: {epochs: 5, lr: 0.2, weight_decay: 1e-4}", "finetune: {epochs: 2, augment: {flip: 0.0}}"
    )
    settings = load_benchmark(write(tmp_path, text)).settings
    assert settings.epochs == 2 and settings.augment.flip == 0.0
    assert settings.augment.grayscale_p == FinetuneSpec().augment.grayscale_p == 0.2
    with pytest.raises(ConfigError, match=r"finetune.augment.flp .*did you mean finetune.augment.flip"):
        load_benchmark(write(tmp_path, text.replace("flip:", "flp:")))


def test_a_missing_manifest_is_named_with_the_variable_it_came_from(tmp_path, data_root):
    (data_root / "synth" / "val.csv").unlink()
    with pytest.raises(ConfigError) as error:
        load_benchmark(write(tmp_path, GOOD))
    message = str(error.value)
    assert "val = '${RHO_DATA}/synth/val.csv'" in message
    assert (
        f"no file at {data_root / 'synth' / 'val.csv'}" in message
        and f"RHO_DATA={str(data_root)!r}" in message
    )
    assert load_benchmark(write(tmp_path, GOOD), check_files=False).val == data_root / "synth" / "val.csv"


def test_an_unset_variable_without_default_says_to_set_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RHO_DATA", raising=False)
    with pytest.raises(
        ConfigError, match=r"bench.yaml: train = .*export RHO_DATA=/path/to/the/folder, or give a default"
    ):
        load_benchmark(write(tmp_path, GOOD), check_files=False)
    with pytest.raises(ConfigError, match=r"export RHO_DATA"):
        load_benchmark(REPO / "benchmarks" / "k400_linear.yaml")


def test_env_defaults_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("RHO_DATA", raising=False)
    monkeypatch.setenv("RHO_EMPTY", "")
    assert expand_env("train", "${RHO_DATA:-data}/synth/train.csv") == ("data/synth/train.csv", ["RHO_DATA"])
    assert expand_env("train", "${RHO_EMPTY:-x}/a/${RHO_DATA:-y}") == ("x/a/y", ["RHO_EMPTY", "RHO_DATA"])
    monkeypatch.setenv("RHO_DATA", "/videos")
    assert expand_env("train", "${RHO_DATA:-data}/synth.csv")[0] == "/videos/synth.csv"
    monkeypatch.delenv("RHO_DATA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "synth").mkdir(parents=True)
    for split in ("train", "val"):
        write(tmp_path / "data" / "synth", "path,label\n", f"{split}.csv")
    benchmark = load_benchmark(REPO / "benchmarks" / "synth_linear.yaml")
    assert benchmark.train == tmp_path / "data" / "synth" / "train.csv", "relative to the current directory"


def test_every_protocol_of_the_schema_has_a_runner_with_the_same_settings_class():
    assert {name: protocol.settings for name, protocol in PROTOCOLS.items()} == PROTOCOL_SPECS
