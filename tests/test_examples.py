"""The example plugin packages of examples/ (docs/extending.md): each installs with pip and works.

The four packages are installed once with ``pip install --no-deps --no-build-isolation
--target`` into a temporary folder (the suite's venv stays as it was); their entry points are
found through the ``.dist-info`` folders there, in this process by putting the folder on
``sys.path`` and in ``rho`` subprocesses by ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from plugin_dist import install_distribution
from tiny_data import tiny_experiment_tree
from videos import read_index

import methods
from harness import backbones
from harness.config import ConfigError, build_experiment
from harness.data.decode import PyAVDecoder, available_decoders, decoder
from harness.eval import load_benchmark
from harness.eval.spec import protocol_names

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PACKAGES = ("rho-example-method", "rho-example-backbone", "rho-example-protocol", "rho-example-decoder")
MODULES = ("rho_example_method", "rho_example_backbone", "rho_example_protocol", "rho_example_decoder")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder with the four example packages installed (from copies: pip builds in the source tree)."""
    root = tmp_path_factory.mktemp("examples")
    sources = [shutil.copytree(EXAMPLES / package, root / "src" / package) for package in PACKAGES]
    target = root / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--target", str(target), *map(str, sources)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return target


@pytest.fixture
def installed(site, monkeypatch):
    """The example packages visible to this process; their modules forgotten afterwards."""
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in MODULES:
        sys.modules.pop(module, None)


def rho(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``rho ARGS`` in a subprocess that sees the example packages."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def centroid_benchmark(synth: dict[str, Path], folder: Path, **section) -> Path:
    """``folder/centroid.yaml``: the example protocol (nearest centroid) on ``tiny_synth``."""
    path = folder / "centroid.yaml"
    benchmark = {
        "name": "tiny-centroid",
        "protocol": "centroid",
        "train": str(synth["train"]),
        "val": str(synth["val"]),
        "views": {"frames": 2, "stride": 2, "crop": 16, "test_temporal": 2, "test_spatial": 1},
    }
    path.write_text(yaml.safe_dump({**benchmark, **({"centroid": section} if section else {})}))
    return path


def refusal(tree: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_experiment(tree, check_files=False)
    return str(info.value)


def test_the_examples_register_their_names_and_parameters(installed, tiny_synth, tmp_path):
    assert "vicreg_example" in methods.available()
    assert methods.params_of("vicreg_example")["out_dim"] == 256
    assert "c3d_example" in backbones.available()
    assert backbones.params_of("c3d_example") == {"width": 16, "depth": 3}
    assert "centroid" in protocol_names()
    assert "pyav_threads" in available_decoders()

    experiment = build_experiment(
        {
            "method": {"name": "vicreg_example", "out_dim": 32, "variance_weight": 10.0},
            "backbone": {"name": "c3d_example", "width": 4},
            "data": {"decoder": "pyav_threads"},
        },
        check_files=False,
    )
    assert experiment.method.params == {"out_dim": 32, "variance_weight": 10.0}
    assert experiment.data.decoder == "pyav_threads"
    message = refusal({"method": {"name": "vicreg_example", "out_dims": 32}})
    assert re.search(r"did you mean (method\.)?out_dim\?", message), message
    assert "did you mean 'pyav_threads'?" in refusal({"data": {"decoder": "pyav_thread"}})

    benchmark = load_benchmark(centroid_benchmark(tiny_synth, tmp_path, metric="euclidean"))
    assert (benchmark.protocol, benchmark.settings.metric, benchmark.settings.normalize) == (
        "centroid",
        "euclidean",
        True,
    )
    with pytest.raises(ConfigError, match=r"centroid\.metric = 'manhattan'.*one of cosine, euclidean"):
        load_benchmark(centroid_benchmark(tiny_synth, tmp_path, metric="manhattan"))
    with pytest.raises(
        ConfigError,
        match=r"did you mean 'centroid'\?.*one of linear, linear_slowfast, knn, finetune, attentive, centroid",
    ):
        path = centroid_benchmark(tiny_synth, tmp_path)
        path.write_text(path.read_text().replace("protocol: centroid", "protocol: centroids"))
        load_benchmark(path)


def test_without_the_examples_their_names_are_refused(tiny_synth, tmp_path):
    assert "did you mean 'pyav'?" in refusal({"data": {"decoder": "pyav_thread"}})
    assert refusal({"data": {"decoder": "pyav_threads"}}).endswith("one of pyav, torchcodec")
    with pytest.raises(
        ConfigError,
        match=r"protocol = 'centroid' is not allowed: .*one of linear, linear_slowfast, knn, finetune, attentive$",
    ):
        load_benchmark(centroid_benchmark(tiny_synth, tmp_path))


def test_a_broken_protocol_or_decoder_plugin_is_refused_before_any_compute(
    plugin_root, monkeypatch, tiny_synth, tmp_path
):
    for folder in ("protocol", "decoder"):
        (plugin_root / folder).mkdir()
    install_distribution(
        plugin_root / "protocol",
        monkeypatch,
        module="not_a_protocol",
        source="PROTOCOL = object()",
        group="rho.protocols",
        name="oddity",
        target="not_a_protocol:PROTOCOL",
    )
    install_distribution(
        plugin_root / "decoder",
        monkeypatch,
        module="broken_decoder",
        source="raise ImportError('libfoo.so: cannot open shared object file')",
        group="rho.decoders",
        name="foo",
        target="broken_decoder:FooDecoder",
    )
    path = centroid_benchmark(tiny_synth, tmp_path)
    path.write_text(path.read_text().replace("protocol: centroid", "protocol: oddity"))
    with pytest.raises(
        ConfigError, match=r"protocol = 'oddity' is not allowed: entry point 'oddity' .* is not a protocol"
    ):
        load_benchmark(path)
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["data"]["decoder"] = "foo"
    assert build_experiment(tree, check_files=False).data.decoder == "foo"  # the name is installed
    with pytest.raises(
        ConfigError, match=r"data.decoder = 'foo' is not allowed: a decoder that loads: .*libfoo\.so"
    ):
        build_experiment(tree, check_files=True)  # as before a run: importing it fails


def test_the_example_decoder_gives_pyav_frames_with_ffmpeg_threads(installed, index_videos):
    backend = decoder("pyav_threads")
    assert backend.name == "pyav_threads"
    times = np.array([0.0, 0.45, 0.5, 7.3, 2.0, 9.95, 10.4, 11.0])  # seeks forward and back, past the end
    for path in (index_videos["long"], index_videos["short"]):
        for short_side in (None, 32):
            video = backend.open(path, short_side=short_side)
            reference = PyAVDecoder().open(path, short_side=short_side)
            try:
                assert video.info == reference.info
                frames, padded = video.at(times)
                assert "AUTO" in str(video.container.streams.video[0].thread_type)
                expected, expected_padded = reference.at(times)
            finally:
                video.close()
                reference.close()
            assert frames.dtype == np.uint8 and frames.shape == (len(times), *expected.shape[1:])
            assert frames.shape[1:3] == ((32, 32) if short_side else (64, 64))
            assert np.array_equal(frames, expected) and padded == expected_padded
            last = reference.info.num_frames - 1
            if short_side is None:  # the frames carry their index: the frame shown at each time
                shown = np.minimum(np.round(times * 10).astype(int), last)
                assert [read_index(frame) for frame in frames] == shown.tolist()
    with pytest.raises(ValueError, match="decodes on the CPU only"):
        decoder("pyav_threads", "cuda")


@pytest.mark.slow  # two rho subprocesses: about 35 s on 2 cores
def test_pretrain_with_the_example_method_backbone_and_decoder_then_evaluate_with_the_example_protocol(
    site, tiny_synth, tmp_path, mlflow_uri
):
    """One real run: ρVICReg on the tiny C3D, decoded by pyav_threads, evaluated at its end by the
    nearest-centroid protocol; then ``rho evaluate`` on its checkpoint gives the same top-1."""
    benchmark = centroid_benchmark(tiny_synth, tmp_path, metric="cosine")
    tree = tiny_experiment_tree(tiny_synth, tmp_path)
    tree["method"] = {"name": "vicreg_example", "hidden_dims": [16], "out_dim": 8}
    tree["backbone"] = {"name": "c3d_example", "width": 4, "depth": 2}
    tree["data"]["decoder"] = "pyav_threads"
    tree["optim"]["epochs"] = 1
    tree["eval"] = {"benchmarks": [str(benchmark)]}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tree))
    result_json = tmp_path / "result.json"
    out = rho(
        site,
        "pretrain",
        str(config),
        "--output",
        str(tmp_path / "run"),
        "--tracking-uri",
        mlflow_uri,
        "--result-json",
        str(result_json),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = MlflowClient(mlflow_uri).get_run(json.loads(result_json.read_text())["run_id"])
    assert (run.data.params["method.name"], run.data.params["backbone.name"]) == (
        "vicreg_example",
        "c3d_example",
    )
    assert run.data.params["data.decoder"] == "pyav_threads"
    metrics = run.data.metrics
    assert {"loss", "invariance", "variance", "covariance"} <= set(metrics)  # the method's own metrics
    assert np.isfinite(metrics["loss"])
    top1 = metrics["eval.tiny-centroid.centroid.top1"]
    assert 0 <= top1 <= 100 and metrics["eval.tiny-centroid.centroid.top5"] == 100  # 2 classes
    assert metrics["eval.tiny-centroid.centroid.skipped"] == 0

    out = rho(
        site, "evaluate", str(tmp_path / "run" / "last.pt"), "--benchmark", str(benchmark), "--workers", "0"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if "eval.tiny-centroid.centroid.top1" in line)
    assert line.split()[-1] == f"{top1:.4g}", "the checkpoint's top-1 is the one its pretraining logged"
