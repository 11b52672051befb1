"""``rho bench``: the runner, the results file and every benchmark at its quick size.

Each benchmark runs for real (real mp4 files, the real engine, real MLflow and Optuna stores)
at a tiny size; the tests check the structure of what it reports and the numbers that must
hold whatever the machine's speed: ratios that agree with the timings they come from, bit-
identical frames and weights, equal gradients, equal accuracies.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness.cli import main
from harness.config import torchcodec_unavailable
from harness.data import MultiClipDataset
from harness.speed import Check, SpeedResult, discover
from harness.speed.media import QUICK_SYNTH
from harness.speed.runner import SpeedContext, SpeedError, parse_params, run_one, select, write_results

DEMO = Path(__file__).resolve().parents[2] / "studies" / "experiments" / "demo.yaml"


@pytest.fixture(scope="module")
def benches():
    return discover()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One work folder for the module: test videos and datasets are made once."""
    return tmp_path_factory.mktemp("bench")


def quick(benches, workdir, name: str, **params) -> SpeedResult:
    result = run_one(benches[name], True, workdir, {k: str(v) for k, v in params.items()}, f"test {name}")
    assert result.skipped is None or name == "gpu", result.skipped
    assert result.name == name and result.size == "quick" and result.seconds > 0
    assert result.environment["cores"] >= 1 and torch.__version__.startswith(
        result.environment["versions"]["torch"]
    )
    return result


# --- runner and results file ---------------------------------------------------------------------


def test_check_verdicts_and_markdown_round_trip(tmp_path):
    at_least = Check("speed-up", 3.2, ">=", 3.0)
    at_most = Check("overhead", 1.2, "<=", 1.05)
    assert at_least.met and not at_most.met and not Check("x", float("nan"), ">=", 0.0).met
    with pytest.raises(ValueError, match="op must be"):
        Check("x", 1.0, "==", 1.0)
    result = SpeedResult("demo", "a vs b", "b at least 3x a", ["case", "a", "b"], [["one", 1.0, 3.2]])
    result.checks = [at_least, at_most]
    assert result.met is False
    text = result.markdown()
    assert "| case | a | b |" in text and "| one | 1 | 3.2 |" in text
    assert "speed-up: 3.2x (goal >= 3x) met" in text and "overhead: 1.2x (goal <= 1.05x) NOT met" in text
    again = SpeedResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and again.row(case="one") == {"case": "one", "a": 1.0, "b": 3.2}


def test_results_file_keeps_each_benchmark_last_run(tmp_path, benches):
    output = tmp_path / "RESULTS.md"
    first = SpeedResult("decode", "t", "g", ["x"], [[1]], environment={"date": "2026-01-01", "machine": "m1"})
    other = SpeedResult("memory", "t", "g", ["x"], [[2]], environment={"date": "2026-01-02", "machine": "m2"})
    write_results(output, [first, other], benches)
    rerun = SpeedResult("decode", "t", "g", ["x"], [[3]], environment={"date": "2026-01-03", "machine": "m3"})
    write_results(output, [rerun], benches)
    text = output.read_text()
    assert text.index("## decode") < text.index("## memory")  # the benchmarks' ORDER
    assert "| 3 |" in text and "| 2 |" in text and "| 1 |" not in text
    assert "Machine: m3" in text and "2026-01-02" in text
    assert set(json.loads(output.with_suffix(".json").read_text())) == {"decode", "memory"}


def test_names_and_params_are_checked_before_running(benches):
    assert list(benches)[:5] == ["decode", "transcode", "augment", "step_overhead", "memory"]
    with pytest.raises(SpeedError, match="unknown benchmark 'decod'; known: decode"):
        select(benches, ["decod"])
    chosen = select(benches, ["decode", "study"])
    assert parse_params(["items=2", "study.trials=3"], chosen) == {
        "decode": {"items": "2"},
        "study": {"trials": "3"},
    }
    with pytest.raises(SpeedError, match="no chosen benchmark takes 'rounds'"):
        parse_params(["rounds=2"], chosen)
    with pytest.raises(SpeedError, match="expected key=value"):
        parse_params(["items"], chosen)
    ctx = SpeedContext("decode", "t", "g", True, workdir=None, params={"items": "many"})
    with pytest.raises(SpeedError, match="items='many' is not a valid int"):
        ctx.param("items", 3)


def test_cli_unknown_benchmark_exits_2(capsys):
    assert main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


# --- the benchmarks, quick size ------------------------------------------------------------------


def test_cli_decode_quick_writes_results(tmp_path, workdir, capsys):
    output = tmp_path / "RESULTS.md"
    assert main(["bench", "decode", "--quick", "--output", str(output), "--workdir", str(workdir)]) == 0
    stored = SpeedResult.from_dict(json.loads(output.with_suffix(".json").read_text())["decode"])
    assert stored.column("ρ") == [1, 2, 4] and stored.column("size") == ["96x64"] * 3
    torchcodec = torchcodec_unavailable() is None
    for row in stored.rows:
        record = dict(zip(stored.columns, row, strict=True))
        assert record["frames identical"] is True  # every backend and one pass: our PyAV path's frames
        assert record["pyav / pytorchvideo"] == pytest.approx(
            record["pyav clips/s"] / record["pytorchvideo clips/s"]
        )
        best = max(record["pyav clips/s"], record["torchcodec clips/s"] if torchcodec else 0.0)
        assert record["limit / best ours"] == pytest.approx(record["limit clips/s"] / best)
        assert record["limit by"] in ("pyav one pass", "torchcodec one pass")
        if torchcodec:
            assert record["torchcodec / pyav"] == pytest.approx(
                record["torchcodec clips/s"] / record["pyav clips/s"]
            )
    # one open for four clips beats four opens and four seeks, whatever the machine
    at4 = stored.row(size="96x64", **{"ρ": 4})
    assert at4["pyav / pytorchvideo"] > 1.0
    assert stored.check("pyav / pytorchvideo at ρ=4 (96x64)").value == at4["pyav / pytorchvideo"]
    text = output.read_text()
    assert "rho bench --quick decode" in text and "## decode" in text and "load average" in text
    assert "| decode | quick |" in capsys.readouterr().out


def test_transcode_times_every_variant_on_the_same_clip_starts(benches, workdir):
    from harness.data.decode import _keyframe_indices, keyframe_spacing, open_video

    result = quick(benches, workdir, "transcode")
    inputs = ["source", "gop 16", "gop 8", "gop 1"]
    assert [(row[1], row[2]) for row in result.rows] == [(rho, name) for rho in (1, 4) for name in inputs]
    for row in result.rows:
        record = dict(zip(result.columns, row, strict=True))
        assert record["items/s"] > 0 and math.isfinite(record["speed-up"])
        assert (record["speed-up"] == 1 and record["disk"] == 1) == (record["input"] == "source")
    # the variants are what they say: all-intra and GOP-8 copies (the source, x264's GOP 250)
    for gop in (1, 8):
        copy = next((workdir / "transcode" / "transcoded").rglob(f"short32_gop{gop}/*.mp4"))
        with open_video(copy) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            keyframes = _keyframe_indices(stream, fps, stream.start_time or 0, stream.time_base)
        assert keyframe_spacing(keyframes) == gop
    assert result.checks[0].name.startswith("best speed-up at ρ=4")


def test_augment_is_bit_identical_to_the_v2_pipeline(benches, workdir):
    result = quick(benches, workdir, "augment", clips=20)
    assert len(result.rows) == 3 and result.column("bit-identical") == [True, True, True]
    for row in result.rows:
        record = dict(zip(result.columns, row, strict=True))
        assert record["v2 clips/s"] > 0 and record["ours / v2"] == pytest.approx(
            record["ours clips/s"] / record["v2 clips/s"]
        )
        assert record["batched clips/s"] > 0 and record["batched - per-clip, max"] < 1e-4
    assert result.check("largest batched - per-clip difference").met
    assert result.check("batched / per-clip on the demo's clips").value == result.rows[0][6]


def test_step_overhead_same_weights_as_hand_written_loop(benches, workdir):
    result = quick(benches, workdir, "step_overhead", rounds=1, steps=1)
    assert result.column("method") == ["simclr", "swav", "moco", "byol"]
    for row in result.rows:
        record = dict(zip(result.columns, row, strict=True))
        assert record["max abs Δw"] <= 1e-5, record  # same math: same weights after the same steps
        assert record["harness / hand"] == pytest.approx(
            record["harness ms/step"] / record["hand-written ms/step"]
        )
    assert result.check("max abs Δw harness vs hand").met


@pytest.mark.slow
def test_memory_low_mode_gives_standard_gradients(benches, workdir):
    result = quick(benches, workdir, "memory")
    assert [(r[0], r[1]) for r in result.rows] == [("simclr", 2), ("simclr", 4)]
    assert result.check("gradients low vs standard (rel.)").met
    for row in result.rows:
        record = dict(zip(result.columns, row, strict=True))
        assert record["grad rel. diff"] <= 1e-4
        assert record["batch MiB"] == pytest.approx(4 * record["ρ"] * 3 * 2 * 16 * 16 * 4 / 2**20)
        assert record["low / standard"] == pytest.approx(record["low MiB"] / record["standard MiB"])


@pytest.mark.slow
def test_evaluation_cache_same_accuracy_as_reencoding(benches, workdir):
    result = quick(benches, workdir, "evaluation", epochs=3, workers=0)
    reference, cold, warm = (result.row(probe=p) for p in result.column("probe"))
    assert cold["top-1 %"] == pytest.approx(reference["top-1 %"], abs=0.5)
    assert warm["top-1 %"] == cold["top-1 %"]
    assert warm["seconds"] < cold["seconds"]  # a warm cache extracts nothing
    assert cold["speed-up vs re-encoding"] == pytest.approx(reference["seconds"] / cold["seconds"])
    assert result.check("top-1 difference (points)").met


@pytest.mark.slow
def test_loading_reports_the_engine_data_wait(benches, workdir, tmp_path, monkeypatch):
    """With the loader in the training process and a clock on which every item takes 1000 s, the
    wait must hold all the items' 1000 s and the step less than one of them, whatever the machine."""
    config = yaml.safe_load(DEMO.read_text())
    config["data"]["workers"] = 0  # items load in the training process, inside the engine's wait
    demo_in_process = tmp_path / "demo.yaml"
    demo_in_process.write_text(yaml.safe_dump(config))
    clock = {"offset": 0.0}
    perf_counter, getitem = time.perf_counter, MultiClipDataset.__getitem__
    monkeypatch.setattr(time, "perf_counter", lambda: perf_counter() + clock["offset"])

    def slow_item(dataset, key):
        clock["offset"] += 1000.0
        return getitem(dataset, key)

    monkeypatch.setattr(MultiClipDataset, "__getitem__", slow_item)
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    result = quick(benches, workdir, "loading", epochs=2, threads=other, config=demo_in_process, matrix=0)
    assert [tuple(r[:2]) for r in result.rows] == [(threads, 1), (threads, 2), (other, 1), (other, 2)]
    quick_batch = benches["loading"].module.QUICK["data.batch_size"]
    items = QUICK_SYNTH.train_videos // quick_batch * quick_batch  # per epoch: 4 steps of 4 videos
    for row in result.rows:
        record = dict(zip(result.columns, row, strict=True))
        wait_s = record["data wait"] * record["epoch s"]
        assert wait_s >= 1000.0 * items and record["epoch s"] - wait_s < 1000.0, record
        assert record["clips/s"] * record["epoch s"] == pytest.approx(2 * items), "ρ = 2 clips per item"
    default = result.row(epoch=2, **{"torch threads": threads})
    assert result.check("data wait, epochs 2+").value == default["data wait"]
    assert torch.get_num_threads() == threads


@pytest.mark.slow
def test_loading_matrix_per_decoder_and_placement_at_rho_4(benches, workdir):
    """ρ = 4 on Kinetics-like files and the demo data, each decoder x placement; a decoder that
    cannot run is skipped with a note, the others still run."""
    result = quick(benches, workdir, "loading", epochs=2, videos=4, decoders="pyav,nodecoder")
    names = [check.name for check in result.checks]
    for files in ("Kinetics-like", "demo"):
        for placement in ("worker", "device"):
            check = result.check(f"data wait, {files} ρ=4 pyav {placement}")
            assert 0 <= check.value <= 1 and check.bound == 0.10
    assert not any("nodecoder" in name for name in names)
    assert any("nodecoder" in note and "skipped" in note for note in result.notes)
    assert any("| Kinetics-like | 4 | pyav | device |" in note for note in result.notes)


@pytest.mark.slow
def test_study_counts_trial_epochs_with_and_without_pruner(benches, workdir):
    result = quick(benches, workdir, "study", trials=3, epochs=2)
    median, none = result.row(pruner="median"), result.row(pruner="none")
    assert none["completed"] == 3 and none["pruned"] == 0 and none["trial-epochs"] == 3 * 2
    assert median["completed"] + median["pruned"] == 3 and median["trial-epochs"] <= 6
    assert result.check("trial-epochs saved by the pruner").value == pytest.approx(
        1 - median["trial-epochs"] / none["trial-epochs"]
    )
    assert math.isfinite(median["best top-1 %"]) and math.isfinite(none["best top-1 %"])


def test_gpu_benchmark_config_and_skip(benches, workdir, tiny_synth):
    experiment = benches["gpu"].module.gpu_experiment(str(tiny_synth["train"]), 32, 15, 3, 224, str(workdir))
    assert (experiment.backbone.name, experiment.method.name, experiment.data.clips) == (
        "slow_r50",
        "byol",
        2,
    )
    assert (experiment.data.frames, experiment.data.stride, experiment.data.crop) == (8, 8, 224)
    assert (experiment.runtime.device, experiment.runtime.precision) == ("cuda", "bf16")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU benchmark would run, not skip")
    result = quick(benches, workdir, "gpu")
    assert result.skipped == "no CUDA device" and result.met is None
    assert "**Skipped:** no CUDA device" in result.markdown()


def test_gpu_script_dry_run_runs_every_configuration_on_the_cpu(benches, workdir, capsys):
    """The prepared GPU script's CPU dry mode: ρ = 2 and 4 x each decoder x both placements, each
    recorded with clips/s, data wait and peak memory; an unknown decoder fails alone, as a note."""
    gpu = benches["gpu"].module
    result = quick(benches, workdir, "gpu", dry_run=1, decoders="pyav,nodecoder", max_seconds=600)
    assert [tuple(r[:3]) for r in result.rows] == [
        (rho, "pyav", placement) for rho in (2, 4) for placement in ("worker", "device")
    ]
    for row in result.rows:
        record = dict(zip(result.columns, row, strict=True))
        assert record["clips/s"] > 0 and 0 <= record["data wait"] <= 1 and record["peak memory GiB"] > 0
    assert sum("nodecoder" in note for note in result.notes) == 4 and "CPU dry run" in result.notes[0]
    budgeted = quick(benches, workdir, "gpu", dry_run=1, clips="2", max_seconds=0.001)
    assert budgeted.rows[:1] and len(budgeted.rows) == 1, "the first always runs; none after the budget"
    assert any("budget would be passed" in note for note in budgeted.notes)
    assert gpu.main(["--dry-run", "--max-seconds", "0.001", "--workdir", str(workdir)]) == 0
    assert "gpu" in capsys.readouterr().out
