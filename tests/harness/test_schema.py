"""The schema mechanism: one did-you-mean, sections built and checked from mappings, YAML files read safely."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.schema import (
    ConfigError,
    build_section,
    choice_hint,
    did_you_mean,
    field_spec,
    read_mapping,
    unknown_key_hint,
)


def test_did_you_mean_names_the_closest_choice_or_nothing():
    assert did_you_mean("clip", ["clips", "frames"]) == "did you mean clips? "
    assert did_you_mean("linaer", ("linear", "knn"), quoted=True) == "did you mean 'linear'? "
    assert did_you_mean("zzz", ["clips", "frames"]) == ""


def test_unknown_keys_and_bad_choices_share_the_suggestion():
    assert unknown_key_hint("data.clip", ["data.clips", "data.frames"]) == (
        "unknown key; did you mean data.clips? known keys: data.clips, data.frames"
    )
    assert choice_hint("ucf10", ("ucf101", "hmdb51")) == "did you mean 'ucf101'? one of ucf101, hmdb51"
    assert choice_hint("zzz", ("ucf101", "hmdb51")) == "one of ucf101, hmdb51"


@dataclass
class Inner:
    flip: float = field_spec(0.5, help="flip probability", min=0.0, max=1.0)
    blur: float = field_spec(0.0, help="blur probability", min=0.0, max=1.0)


def strong() -> Inner:
    return Inner(flip=0.9, blur=0.3)


@dataclass
class Outer:
    protocol: str = field_spec(help="the protocol", choices=("linear", "knn"))
    train: Path = field_spec(help="training manifest", file=True)
    epochs: int = field_spec(10, help="passes", min=1)
    augment: Inner = field_spec(factory=strong, help="augmentation")


def test_build_section_checks_keys_values_and_keeps_a_factorys_defaults(tmp_path):
    (tmp_path / "train.csv").write_text("")
    built = build_section(
        "", Outer, {"protocol": "knn", "train": str(tmp_path / "train.csv"), "augment": {"blur": 0.1}}
    )
    assert built.protocol == "knn" and built.epochs == 10
    assert built.train == tmp_path / "train.csv" and built.train.is_absolute()
    assert built.augment == Inner(flip=0.9, blur=0.1), "the factory's flip stays under a partial mapping"
    with pytest.raises(
        ConfigError, match=r"^protocol = 'linaer' is not allowed: did you mean 'linear'\? one of"
    ):
        build_section("", Outer, {"protocol": "linaer", "train": "x"})
    with pytest.raises(
        ConfigError, match=r"^augment.flp = 1 is not allowed: unknown key; did you mean augment.flip\?"
    ):
        build_section("", Outer, {"protocol": "knn", "train": "x", "augment": {"flp": 1}})
    with pytest.raises(
        ConfigError, match=r"^bench.yaml: train = None is not allowed: a value is required \(training"
    ):
        build_section("", Outer, {"protocol": "knn"}, source="bench.yaml")
    with pytest.raises(ConfigError, match=r"^spec.epochs = 0 is not allowed: must be >= 1"):
        build_section("spec", Outer, {"protocol": "knn", "train": "x", "epochs": 0})


def test_a_missing_file_names_the_variable_it_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("RHO_DATA", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        build_section("", Outer, {"protocol": "knn", "train": "${RHO_DATA}/train.csv"}, check_files=True)
    message = str(info.value)
    assert message.startswith("train = '${RHO_DATA}/train.csv' is not allowed: an existing file")
    assert f"no file at {tmp_path / 'train.csv'}" in message and f"RHO_DATA={str(tmp_path)!r}" in message
    monkeypatch.delenv("RHO_DATA")
    with pytest.raises(ConfigError, match="export RHO_DATA"):
        build_section("", Outer, {"protocol": "knn", "train": "${RHO_DATA}/train.csv"})


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        (None, "a path to an existing YAML file"),
        ("- 1\n- 2\n", "a YAML mapping with sections a, b"),
        ("a: [1\n", "valid YAML"),
        ("!!python/object/apply:os.system ['true']\n", "valid YAML"),
    ],
)
def test_read_mapping_refuses_what_is_not_a_yaml_mapping(tmp_path, text, refusal):
    path = tmp_path / "a.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=refusal):
        read_mapping(path, "config", "YAML file", "sections a, b")


def test_read_mapping_reads_a_mapping_and_an_empty_file(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("")
    assert read_mapping(path, "config", "YAML file", "sections a, b") == {}
    path.write_text("a: 1\n")
    assert read_mapping(path, "config", "YAML file", "sections a, b") == {"a": 1}
