"""Bad inputs: every config key, unknown names, study specs, manifests and broken video files each
give one clear error (or a skip with a count), never a traceback or a hang."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from reliability_helpers import (
    bad_videos,
    error_line,
    rho,
    tiny_experiment_tree,
    write_vfr_index_video,
)
from videos import read_index

from harness.cli import main
from harness.config import ConfigError, Experiment, all_keys, build_experiment, set_dotted
from harness.data import MultiClipDataset, write_manifest
from harness.data.check import check_video
from harness.data.decode import decode_times, open_video, probe


def key_fields() -> dict[str, tuple[typing.Any, dict]]:
    """Every dotted config key → (its annotated type without Optional, its validation rules)."""
    out: dict[str, tuple[typing.Any, dict]] = {}

    def walk(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(f"{prefix}{f.name}.", hint)
            elif f.name != "params":
                if typing.get_origin(hint) in (typing.Union, types.UnionType):
                    hint = next(a for a in typing.get_args(hint) if a is not type(None))
                out[f"{prefix}{f.name}"] = (hint, dict(f.metadata))

    walk("", Experiment)
    return out


def wrong_type(hint) -> object:
    """A value of the wrong type for ``hint``."""
    if hint is bool:
        return "yes"
    if hint in (int, float):
        return "fast"
    if hint is str:
        return 5
    if typing.get_origin(hint) is list:
        return 7
    if typing.get_origin(hint) is dict:
        return [1]
    raise AssertionError(f"no wrong value for {hint}")


def out_of_range(hint, rules: dict) -> list[object]:
    """Values just outside each rule of a key."""
    values: list[object] = []
    if "choices" in rules:
        values.append("no-such-choice")
    if "min" in rules:
        low = rules["min"] - (1 if hint is int else 0.5)
        values.append([low] * 4 if typing.get_origin(hint) is list else low)
    if "max" in rules:
        values.append(rules["max"] + 0.5)
    if "gt" in rules:
        values.append(rules["gt"])
    if "length" in rules:
        values.append([0.1] * (rules["length"] + 1))
    if rules.get("pair") or rules.get("pair01"):
        values += [[0.9, 0.2], [0.5]]
    return values


def check_refused(key: str, value: object, named: str | None = None) -> str:
    """Build an experiment with ``key = value``: one ConfigError naming ``named`` (default: the key)."""
    tree: dict = {}
    set_dotted(tree, key, value)
    with pytest.raises(ConfigError) as info:
        build_experiment(tree, check_files=False)
    assert info.value.key.split("[")[0] == (named or key), (key, value, str(info.value))
    message = str(info.value)
    assert message.startswith(f"{info.value.key} = ") and "is not allowed: " in message
    return message


def test_every_config_key_refuses_a_value_of_the_wrong_type():
    fields = key_fields()
    assert set(fields) == set(all_keys()) and len(fields) > 40
    for key, (hint, rules) in fields.items():
        message = check_refused(key, wrong_type(hint))
        expected = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
        if "registry" in rules:  # method.name, backbone.name: the registered names are listed
            expected[str] = "one of"
        assert expected.get(hint, "a list" if typing.get_origin(hint) is list else "") in message, message


def test_every_bounded_key_refuses_values_just_outside_its_range():
    checked = 0
    for key, (hint, rules) in key_fields().items():
        for value in out_of_range(hint, rules):
            message = check_refused(key, value)
            assert any(word in message for word in ("must be", "one of", "[low, high]", "a list of")), message
            checked += 1
    assert checked >= 30, "the rules of the config keys were not found"
    for key in ("optim.lr", "data.t_max", "optim.warmup_epochs"):  # not finite
        check_refused(key, float("nan"))


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("data.clipz", 2, "did you mean data.clips?"),
        ("runtime.sed", 1, "did you mean runtime.seed?"),
        ("eval.knn_kk", 1, "did you mean eval.knn_k?"),
        ("optim.lr_scale", "linear", "did you mean optim.lr_scaling?"),
        ("method.name", "simclr2", "one of"),
        ("backbone.name", "resnet50", "one of"),
        ("method.tempreature", 0.1, "did you mean method.temperature?"),
    ],
)
def test_unknown_names_are_refused_with_a_suggestion(key, value, hint):
    assert hint in check_refused(key, value)
    assert "did you mean runtime?" in check_refused("runtim.seed", 1, named="runtim")


def write_yaml(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_configs_specs_and_manifests_end_in_one_line_from_the_cli(tiny_synth, tmp_path, capsys):
    """``rho`` itself, in this process: one ``rho: error:`` line naming the file and the fix, status 2."""
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    videos = sorted((tiny_synth["train"].parent).rglob("*.mp4"))[:3]
    manifests = {
        "missing file": ("path,label\n" + f"{videos[0]},0\n{tmp_path / 'gone.mp4'},1\n", "does not exist"),
        "bad label": ("path,label\n" + f"{videos[0]},0\n{videos[1]},cat\n", "is not an integer class index"),
        "negative label": ("path,label\n" + f"{videos[0]},-3\n", "is negative"),
        "duplicate row": (
            "path,label\n" + f"{videos[0]},0\n{videos[1]},1\n{videos[0]},0\n",
            "repeats line 2",
        ),
        "no header": (f"{videos[0]},0\n", "lacks column"),
        "no rows": ("path,label\n", "no rows after the header"),
    }
    for name, (text, expected) in manifests.items():
        manifest = tmp_path / f"{name.replace(' ', '_')}.csv"
        manifest.write_text(text)
        config = write_yaml(tmp_path / "exp.yaml", {**tree, "data": {**tree["data"], "train": str(manifest)}})
        code, _, err = run_main(
            capsys, "pretrain", str(config), "data.allow_outside_root=true", "--output", str(tmp_path / "x")
        )
        assert code == 2 and err.startswith("rho: error: ") and len(err.strip().splitlines()) == 1, (
            name,
            err,
        )
        assert str(manifest) in err and expected in err, (name, err)
    assert not (tmp_path / "x").exists(), "nothing ran"

    config = write_yaml(tmp_path / "exp.yaml", tree)
    code, _, err = run_main(capsys, "pretrain", str(config), "optim.epochs=0")
    assert code == 2 and "command line: optim.epochs=0 is not allowed" in err and ">= 1" in err

    spec = {"name": "s", "experiment": tree, "grid": {"data.clips": []}}
    code, _, err = run_main(capsys, "study", "run", str(write_yaml(tmp_path / "s.yaml", spec)))
    assert code == 2 and "grid.data.clips = []" in err and "non-empty list" in err
    spec = {"name": "s", "experiment": tree, "grid": {"data.clips": [1]}, "sedes": [0]}
    code, _, err = run_main(capsys, "study", "run", str(write_yaml(tmp_path / "s.yaml", spec)))
    assert code == 2 and "sedes" in err and "did you mean seeds" in err


def test_a_bad_config_in_a_real_process_exits_2_without_a_traceback(tiny_synth, tmp_path):
    config = write_yaml(tmp_path / "exp.yaml", tiny_experiment_tree(tiny_synth, tmp_path))
    result = rho("pretrain", str(config), "data.clips=-1", timeout=120)
    line = error_line(result, 2)
    assert "command line: data.clips=-1 is not allowed" in line and ">= 1" in line


def test_training_skips_and_counts_every_kind_of_broken_video(tiny_synth, tmp_path, mlflow_uri):
    """Corrupt, truncated, zero-length and audio-only files in a training manifest: the run
    finishes (a hang fails at the timeout), each bad file is counted once, the rest train."""
    good = sorted((tiny_synth["train"].parent / "videos").rglob("*.mp4"))
    assert len(good) >= 12
    bad = bad_videos(tmp_path / "data" / "bad", good[0])
    rows = [{"path": str(p), "label": i % 2} for i, p in enumerate(good[:12])]
    rows += [{"path": str(p), "label": 0} for p in bad.values()]
    manifest = write_manifest(tmp_path / "data" / "train.csv", rows)
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"].update(train=str(manifest), val=None, batch_size=4)
    tree["optim"]["epochs"] = 1
    config = write_yaml(tmp_path / "exp.yaml", tree)
    result = rho(
        "pretrain",
        str(config),
        "data.allow_outside_root=true",
        "--output",
        str(tmp_path / "run"),
        "--tracking-uri",
        mlflow_uri,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warned = [line for line in result.stderr.splitlines() if "skipping unreadable video" in line]
    assert {next(p for p in bad.values() if str(p) in line) for line in warned} == set(bad.values())
    assert len(warned) == len(bad), "one warning per bad file"
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("tests").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["epoch.bad_files"] == len(bad)


def _pretrained_checkpoint(tiny_synth, tmp_path, mlflow_uri) -> Path:
    """A one-epoch tiny checkpoint, made by `rho pretrain` (a few seconds)."""
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"]["epochs"] = 1
    config = write_yaml(tmp_path / "exp.yaml", tree)
    result = rho("pretrain", str(config), "--output", str(tmp_path / "run"), "--tracking-uri", mlflow_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "run" / "last.pt"


def _knn_benchmark(path: Path, train: Path, val: Path) -> Path:
    views = {"frames": 2, "stride": 2, "crop": 16, "test_temporal": 1, "test_spatial": 1}
    return write_yaml(
        path,
        {
            "name": "tiny-knn",
            "protocol": "knn",
            "train": str(train),
            "val": str(val),
            "views": views,
            "knn": {"k": 5},
        },
    )


def test_evaluate_skips_and_counts_a_truncated_and_an_empty_video(tiny_synth, tmp_path, mlflow_uri):
    """`rho evaluate` on a test manifest with a truncated mp4 and an empty file among 20 videos:
    exit 0, one line naming the count, the first file and `rho data check`, the skipped metric,
    and the top-1 of the readable videos alone."""
    checkpoint = _pretrained_checkpoint(tiny_synth, tmp_path, mlflow_uri)
    good = sorted((tiny_synth["train"].parent / "videos").rglob("*.mp4"))
    assert len(good) >= 20
    bad = bad_videos(tmp_path / "bad", good[0])
    rows = [{"path": str(p), "label": i % 2} for i, p in enumerate(good[:20])]
    broken = [{"path": str(bad[name]), "label": 0} for name in ("truncated", "empty")]
    manifests = {
        "good": write_manifest(tmp_path / "good.csv", rows),
        "bad": write_manifest(tmp_path / "bad.csv", rows[:7] + broken + rows[7:]),
    }
    outputs = {}
    for name, manifest in manifests.items():
        benchmark = _knn_benchmark(tmp_path / f"{name}.yaml", tiny_synth["train"], manifest)
        result = rho("evaluate", str(checkpoint), "--benchmark", str(benchmark), "--workers", "1")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        outputs[name] = result.stdout
    metric = lambda out, key: next(line.split()[-1] for line in out.splitlines() if key in line)  # noqa: E731
    assert metric(outputs["bad"], "eval.tiny-knn.knn.top1") == metric(
        outputs["good"], "eval.tiny-knn.knn.top1"
    )
    assert metric(outputs["bad"], "eval.tiny-knn.knn.skipped") == "2"
    assert metric(outputs["good"], "eval.tiny-knn.knn.skipped") == "0"
    [line] = [line for line in outputs["bad"].splitlines() if "skipped (unreadable)" in line]
    assert f"2 of 22 videos of {manifests['bad']}" in line and f"first: {bad['truncated']}" in line
    assert f"run `rho data check {manifests['bad']}`" in line
    # a bad row in the second benchmark's manifest: refused before the first is computed
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text(f"path,label\n{good[0]},0\n{good[1]},cat\n")
    second = _knn_benchmark(tmp_path / "bad_label.yaml", tiny_synth["train"], bad_label)
    result = rho(
        "evaluate", str(checkpoint), "--benchmark", str(tmp_path / "good.yaml"), "--benchmark", str(second)
    )
    line = error_line(result, 2)
    assert f"{bad_label}:3: label 'cat' is not an integer" in line and str(second) in line, line
    assert "eval.tiny-knn" not in result.stdout, "nothing was computed"


def test_a_bad_val_or_benchmark_manifest_is_refused_before_the_run_starts(
    tiny_synth, tmp_path, mlflow_uri, capsys
):
    """A data.val or benchmark manifest with a missing file or a bad label: exit 2 with one line
    naming the key and the manifest, before any compute: no MLflow run, no checkpoint (every
    case in this process, the first also as a real `rho pretrain` process)."""
    videos = sorted((tiny_synth["train"].parent / "videos").rglob("*.mp4"))[:3]
    manifests = {
        "missing": (f"path,label\n{videos[0]},0\n{tmp_path / 'gone.mp4'},1\n", "does not exist"),
        "label": (f"path,label\n{videos[0]},0\n{videos[1]},cat\n", "is not an integer class index"),
    }
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    cases = []
    for name, (text, expected) in manifests.items():
        manifest = tmp_path / f"{name}.csv"
        manifest.write_text(text)
        benchmark = _knn_benchmark(tmp_path / f"{name}.yaml", tiny_synth["train"], manifest)
        monitored = {**tree, "data": {**tree["data"], "val": str(manifest)}, "eval": {"knn_monitor": True}}
        evaluated = {**tree, "eval": {"benchmarks": [str(benchmark)]}}
        cases += [
            ("data.val", monitored, manifest, expected),
            ("eval.benchmarks", evaluated, manifest, expected),
        ]
    for number, (key, case, manifest, expected) in enumerate(cases):
        config = write_yaml(tmp_path / f"exp{number}.yaml", case)
        argv = ["pretrain", str(config), "data.allow_outside_root=true", "--tracking-uri", mlflow_uri]
        argv += ["--output", str(tmp_path / f"run{number}")]
        code, _, err = run_main(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"rho: error: {key}") and str(manifest) in err and expected in err, err
        if number == 0:
            line = error_line(rho(*argv), 2)
            assert line == err.strip(), "the same line from a real process"
    assert not any((tmp_path / f"run{number}").exists() for number in range(len(cases))), "no checkpoint"
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests")
    assert experiment is None or not client.search_runs([experiment.experiment_id]), "no MLflow run"


def test_bad_videos_are_named_by_data_check_and_never_hang(index_videos, tmp_path):
    bad = bad_videos(tmp_path, index_videos["long"])
    reasons = {name: check_video(path) for name, path in bad.items()}
    assert not any(r.ok for r in reasons.values())
    assert "zero-length" in reasons["empty"].reason and "no video stream" in reasons["audio"].reason
    for name in ("corrupt", "truncated"):
        assert reasons[name].reason, name
    # every kind, through the dataset: skipped and counted, the item comes from the good video
    rows = [{"path": str(p), "label": 1} for p in bad.values()] + [
        {"path": str(index_videos["long"]), "label": 7}
    ]
    dataset = MultiClipDataset(write_manifest(tmp_path / "m.csv", rows), clips=2, frames=4, stride=2)
    item = dataset[0]
    assert item["label"] == 7 and item["skipped"] == len(bad) and dataset.bad_files == set(bad.values())


def test_variable_frame_rate_video_gives_the_frame_shown_at_each_time(tmp_path):
    """20 frames at 10 fps, then 10 frames 0.3 s apart: each requested time gets the frame on
    screen then, to within one step of the grid of the stream's average rate (the decoder maps
    requested times and frame times to that grid, each rounded by up to half a step)."""
    times = [0.1 * i for i in range(20)] + [2.0 + 0.3 * i for i in range(1, 11)]
    path = write_vfr_index_video(tmp_path / "vfr.mp4", times)
    container = open_video(path)
    info = probe(container, path)
    requested = np.arange(0.0, times[-1], 0.07)
    frames, padded = decode_times(container, requested, seek_threshold=0.5)
    container.close()
    step = 1.0 / info.fps + 1e-6
    assert padded == 0
    for t, frame in zip(requested, frames, strict=True):
        shown = read_index(frame)
        assert times[shown] <= t + step, (t, shown)
        assert shown == len(times) - 1 or times[shown + 1] > t - step, (t, shown)
    assert check_video(path, full=True).ok
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(path), "label": 0}])
    item = MultiClipDataset(manifest, clips=3, frames=4, stride=2, t_max=2.0)[(1, 0)]
    assert item["clips"].shape == (3, 3, 4, 64, 64) and item["skipped"] == 0
    for v in range(3):  # each clip starts with the frame shown at its start time
        first = read_index(item["clips"][v][:, 0].numpy())
        assert times[first] <= float(item["starts"][v]) + step
