"""Bad inputs that were taken silently or ended in a traceback (issue 25, items 6 and 7): each now
gives one ``rho: error:`` line (exit status 2) naming the file or key, the value and the fix,
before any compute where it can be known then."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from reliability_helpers import bad_videos, error_line, rho, tiny_experiment_tree
from tiny_data import write_tiny_knn_benchmark

from harness.cli import main
from harness.config import ConfigError, load_experiment
from harness.data import MultiClipDataset, read_manifest, write_manifest
from harness.eval import load_benchmark
from harness.study.spec import load_study


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def one_line(capsys, *argv: str) -> str:
    """``rho ARGV`` in this process: exit status 2 and one ``rho: error:`` line, returned."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("rho: error: ") and len(err.splitlines()) == 1, (code, err)
    return err


def synth_videos(tiny_synth) -> list[Path]:
    return sorted((tiny_synth["train"].parent / "videos").rglob("*.mp4"))


def no_runs(mlflow_uri: str) -> bool:
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests")
    return experiment is None or not client.search_runs([experiment.experiment_id])


# --- 6. silent wrong input -----------------------------------------------------------------------


def test_a_label_past_the_known_classes_is_refused_with_the_manifest_line(
    tiny_synth, tmp_path, mlflow_uri, capsys
):
    """Wherever the number of classes is known — classes.txt or spec.json beside the manifest,
    the dataset family, method.num_classes, a benchmark's dataset — a label at or past it is
    refused, naming the manifest, its line, the count, what says so and the fix; nothing runs.
    Before, supervised training built a head of max(label) + 1 classes and the probes ran."""
    videos = synth_videos(tiny_synth)
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    supervised = {**tree, "method": {"name": "supervised"}, "data": {**tree["data"], "val": None}}
    rows = [{"path": str(v), "label": i % 2} for i, v in enumerate(videos[:6])]
    argv = ["data.allow_outside_root=true", "--tracking-uri", mlflow_uri]

    def manifest(folder: Path, label: int, beside: str | None) -> Path:
        folder.mkdir()
        if beside:  # what `rho data import` and `rho data synth` leave beside their manifests
            shutil.copy(tiny_synth["train"].parent / beside, folder / beside)
        return write_manifest(folder / "train.csv", [*rows, {"path": str(videos[6]), "label": label}])

    hmdb, given = {"data": {"dataset": "hmdb51"}}, {"method": {"num_classes": 8}}
    cases = [  # (manifest, extra config, what the line must say, the fix it must name)
        (manifest(tmp_path / "names", 5, "classes.txt"), {}, "classes.txt lists 2 classes", "add the class"),
        (manifest(tmp_path / "synth", 2, "spec.json"), {}, "spec.json (rho data synth) says 2", "remake"),
        (manifest(tmp_path / "hmdb", 51, None), hmdb, "hmdb51 has 51", "set data.dataset: custom"),
        (manifest(tmp_path / "given", 8, None), given, "num_classes is 8", "raise method.num_classes"),
    ]
    for number, (path, extra, says, fix) in enumerate(cases):
        case = {key: {**value, **extra.get(key, {})} for key, value in supervised.items()}
        case["data"]["train"] = str(path)
        config = write_yaml(tmp_path / f"exp{number}.yaml", case)
        err = one_line(capsys, "pretrain", str(config), *argv, "--output", str(tmp_path / f"run{number}"))
        assert f"{path}:8: label " in err and says in err and f"fix the row, or {fix}" in err, err
    # a benchmark's manifest (what the probes read), against the benchmark's dataset family
    ucf = write_manifest(tmp_path / "ucf.csv", [*rows, {"path": str(videos[6]), "label": 101}])
    benchmark = yaml.safe_load(write_tiny_knn_benchmark(tiny_synth, tmp_path).read_text())
    benchmark = write_yaml(tmp_path / "ucf.yaml", {**benchmark, "dataset": "ucf101", "val": str(ucf)})
    evaluated = {**tree, "eval": {"benchmarks": [str(benchmark)]}}
    err = one_line(capsys, "pretrain", str(write_yaml(tmp_path / "e.yaml", evaluated)), *argv)
    assert f"benchmark {benchmark} (val): {ucf}:8: label 101 is not a class index: dataset ucf101" in err
    assert not any((tmp_path / f"run{n}").exists() for n in range(len(cases))) and no_runs(mlflow_uri)
    # the same line from a real process
    config = tmp_path / "exp0.yaml"
    line = error_line(rho("pretrain", str(config), *argv, "--output", str(tmp_path / "real")), 2)
    assert f"{cases[0][0]}:8: label 5 is not a class index" in line, line


def test_a_repeated_yaml_key_is_refused_naming_the_file_the_line_and_the_key(
    tiny_synth, tmp_path, mlflow_uri
):
    """A key given twice in one mapping, at any depth, in a config, a benchmark or a study spec:
    one line naming the file, the line and the dotted key. Before, YAML kept the last value without
    a word, and a repeated section replaced the whole first one (then another key was blamed)."""
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    text = yaml.safe_dump(tree, sort_keys=False)
    repeated_section = text + "optim:\n  epochs: 1\n"  # YAML: the first optim's other keys dropped
    section_line = len(text.splitlines()) + 1
    config = tmp_path / "section.yaml"
    config.write_text(repeated_section)
    argv = ["--output", str(tmp_path / "run"), "--tracking-uri", mlflow_uri]
    line = error_line(rho("pretrain", str(config), *argv), 2)
    assert line.startswith(f"rho: error: {config}:{section_line}: optim = ") and "each key once" in line, line
    first_optim = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("optim:"))
    assert f"after line {first_optim}" in line and "replaces the whole first one" in line, line
    assert not (tmp_path / "run").exists()

    nested = tmp_path / "nested.yaml"
    nested.write_text("data:\n  clips: 2\n  frames: 4\n  clips: 3\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(nested, check_files=False)
    assert str(info.value).startswith(f"{nested}:4: data.clips = 3 is not allowed: each key once")
    benchmark = tmp_path / "bench.yaml"
    benchmark.write_text(write_tiny_knn_benchmark(tiny_synth, tmp_path).read_text() + "knn: {k: 3}\n")
    with pytest.raises(ConfigError, match=rf"^{benchmark}:\d+: knn = \{{'k': 3\}} is not allowed: each key"):
        load_benchmark(benchmark)
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\nexperiment: {config}\ngrid:\n  - {{data.clips: 1, data.clips: 2}}\n")
    with pytest.raises(ConfigError, match=rf"^{study}:4: grid\[0\]\.data\.clips = 2 is not allowed"):
        load_study(study, check_files=False)
    # keys a merge brings in may still be overridden
    merged = tmp_path / "merged.yaml"
    merged.write_text("optim:\n  <<: {epochs: 3, lr: 0.1, warmup_epochs: 0}\n  lr: 0.2\n")
    assert load_experiment(merged, check_files=False).optim.lr == 0.2


def test_a_crop_larger_than_the_frames_is_refused_where_their_size_is_known(
    tiny_synth, index_videos, tmp_path, mlflow_uri, capsys, caplog
):
    """data.crop above the frames' short side only upsamples them: refused when the size is
    certain (spec.json of `rho data synth`, data.decode_short_side), warned about once, naming
    the first video, when only a probe of it tells."""
    from harness.train.prepare import check_frames

    config = write_yaml(tmp_path / "exp.yaml", tiny_experiment_tree(tiny_synth, tmp_path))
    argv = ["--tracking-uri", mlflow_uri, "--output", str(tmp_path / "run")]
    err = one_line(capsys, "pretrain", str(config), "data.crop=48", *argv)
    assert "data.crop = 48 is not allowed: at most 32" in err and "are 32x32 pixels (its spec.json)" in err
    assert str(tiny_synth["train"]) in err and "set data.crop <= 32" in err, err
    err = one_line(capsys, "pretrain", str(config), "data.decode_short_side=12", *argv)
    assert "data.crop = 16 is not allowed: at most 12: data.decode_short_side" in err, err
    assert not (tmp_path / "run").exists() and no_runs(mlflow_uri)
    # no spec.json: the first video that opens (64x64) is probed; one warning, training goes on
    broken = bad_videos(tmp_path / "bad", index_videos["long"])
    rows = [{"path": str(broken["corrupt"]), "label": 0}, {"path": str(index_videos["long"]), "label": 1}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    experiment = load_experiment(None, [f"data.train={manifest}", "data.crop=96"])
    with caplog.at_level(logging.WARNING, logger="harness.train.prepare"):
        check_frames(experiment.data, read_manifest(manifest))
    [warning] = [r.getMessage() for r in caplog.records if "data.crop" in r.getMessage()]
    assert f"data.crop 96 is larger than the frames of {manifest}" in warning, warning
    assert f"{index_videos['long']}, is 64x64" in warning and "set data.crop <= 64" in warning, warning
    caplog.clear()
    check_frames(
        load_experiment(None, [f"data.train={manifest}", "data.crop=64"]).data, read_manifest(manifest)
    )
    assert not caplog.records


# --- 7. tracebacks instead of one line ----------------------------------------------------------


def test_a_manifest_with_fewer_rows_than_the_batch_is_one_line(tiny_synth, tmp_path, mlflow_uri):
    config = write_yaml(tmp_path / "exp.yaml", tiny_experiment_tree(tiny_synth, tmp_path))
    argv = ["--tracking-uri", mlflow_uri, "--output", str(tmp_path / "run")]
    line = error_line(rho("pretrain", str(config), "data.batch_size=20", *argv), 2)
    assert "data.batch_size = 20 is not allowed: at most the 12 rows of the manifest" in line, line
    assert str(tiny_synth["train"]) in line and "set data.batch_size <= 12" in line, line
    assert not (tmp_path / "run").exists() and no_runs(mlflow_uri)


def test_a_manifest_of_only_broken_videos_is_one_line_before_any_compute(tiny_synth, tmp_path, mlflow_uri):
    """Every video of a 3-row manifest broken: one line saying so, naming the manifest and `rho data
    check`, before the run starts; and from the dataset itself (files that open but do not
    decode get that far), also when a DataLoader worker reads it. Before: "32 videos in a row"
    and a traceback."""
    from harness.data.dataset import UnreadableVideos

    broken = bad_videos(tmp_path / "data", synth_videos(tiny_synth)[0])
    rows = [
        {"path": str(broken[name]), "label": i % 2}
        for i, name in enumerate(("corrupt", "truncated", "empty"))
    ]
    manifest = write_manifest(tmp_path / "data" / "train.csv", rows)
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"].update(train=str(manifest), val=None, batch_size=2)
    config = write_yaml(tmp_path / "exp.yaml", tree)
    result = rho("pretrain", str(config), "--tracking-uri", mlflow_uri, "--output", str(tmp_path / "run"))
    line = error_line(result, 2)
    assert f"every one of the 3 videos of {manifest} failed to decode" in line, line
    assert f"run `rho data check {manifest}`" in line and "in a row" not in line, line
    assert not (tmp_path / "run").exists() and no_runs(mlflow_uri)

    dataset = MultiClipDataset(manifest, clips=2, frames=2, stride=2)
    with pytest.raises(UnreadableVideos, match=rf"^every one of the 3 videos of {manifest} failed"):
        dataset[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    with pytest.raises(UnreadableVideos) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith(f"every one of the 3 videos of {manifest}") and "\n" not in message, message


def test_a_batch_of_one_video_is_refused_where_batchnorm_needs_two(tiny_synth, tmp_path, mlflow_uri):
    """data.batch_size=1, which the config allows (`rho data inspect` uses it), cannot train a
    method with BatchNorm: refused naming the key, the method and the reason, not a traceback
    from the first step."""
    config = write_yaml(tmp_path / "exp.yaml", tiny_experiment_tree(tiny_synth, tmp_path))
    argv = ["--tracking-uri", mlflow_uri, "--output", str(tmp_path / "run")]
    line = error_line(rho("pretrain", str(config), "data.batch_size=1", *argv), 2)
    assert "data.batch_size = 1 is not allowed: at least 2 for method simclr with backbone r3d_tiny" in line
    assert "BatchNorm" in line and "set data.batch_size=2" in line, line
    assert not (tmp_path / "run").exists() and no_runs(mlflow_uri)


def test_evaluate_on_a_checkpoint_whose_weights_do_not_fit_its_method_is_one_line(
    tiny_synth, tmp_path, mlflow_uri
):
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["optim"]["epochs"] = 1
    config = write_yaml(tmp_path / "exp.yaml", tree)
    made = rho("pretrain", str(config), "--output", str(tmp_path / "run"), "--tracking-uri", mlflow_uri)
    assert made.returncode == 0, made.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    stored = yaml.safe_load(state["config"])
    variants = {
        "byol": {**stored, "method": {"name": "byol", "projector_hidden_dims": [16], "out_dim": 8}},
        "wider": {**stored, "method": {**stored["method"], "out_dim": 12}},
    }
    benchmark = write_tiny_knn_benchmark(tiny_synth, tmp_path)
    lines = {}
    for name, changed in variants.items():
        torch.save({**state, "config": yaml.safe_dump(changed)}, tmp_path / f"{name}.pt")
        result = rho(
            "evaluate", str(tmp_path / f"{name}.pt"), "--benchmark", str(benchmark), "--workers", "0"
        )
        lines[name] = error_line(result, 2)
        assert "eval.tiny-knn" not in result.stdout
    byol, wider = lines["byol"], lines["wider"]
    assert (
        f"checkpoint {tmp_path / 'byol.pt'}: its weights do not fit its method byol with backbone r3d_tiny"
        in byol
    )
    assert " missing, 8 unexpected and 0 reshaped of " in byol, byol
    assert "missing 'projector." in byol and "unexpected 'head." in byol, byol
    assert (
        "0 missing, 0 unexpected and 2 reshaped" in wider and "[8, 16] in the checkpoint, [12, 16]" in wider
    )
