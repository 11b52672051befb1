"""The ``linear_slowfast`` protocol (SlowFast's linear evaluation on augmented clips) end to end on
real mp4 videos (bright vs dark) with a random r3d_tiny: the encoder's weights frozen but its
BatchNorm statistics updated, the test softmax averaged over views, SlowFast's lr schedule, and
metric names that keep the two linear protocols apart."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from videos import brightness_manifests

from harness import backbones
from harness.data.views import ViewDataset
from harness.eval import (
    PROTOCOLS,
    EvalContext,
    FrozenEncoderProbe,
    LinearSlowFastSpec,
    evaluate,
    fit_linear_on_clips,
    load_benchmark,
    score_on_views,
    slowfast_lr,
    weights_fingerprint,
)
from harness.eval.spec import PROTOCOL_SPECS
from harness.runtime import Runtime
from harness.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """train.csv (8 videos) and val.csv (4 videos), half bright (label 0), half dark (label 1)."""
    return brightness_manifests(tmp_path_factory.mktemp("linear-slowfast"), blocks=6)


def _benchmark(tmp_path: Path, data: dict[str, Path], protocol: str = "linear_slowfast", **settings):
    """A benchmark of 4-frame clips, 24-px training crops, 2 × 3 test views of 32 px, loaded."""
    section = {"epochs": 3, "lr": 0.5, "batch_size": 4, "warmup_epochs": 1, "train_crop": 24, **settings}
    if protocol != "linear_slowfast":
        section = settings
    path = tmp_path / f"{protocol}.yaml"
    views = {"frames": 4, "stride": 2, "crop": 32, "short_side": 32, "test_temporal": 2, "test_spatial": 3}
    path.write_text(
        f"name: bright\nprotocol: {protocol}\ntrain: {data['train']}\nval: {data['val']}\n"
        f"views: {views}\n{protocol}: {section}\n".replace("'", "")
    )
    return load_benchmark(path)


def _context(tmp_path: Path) -> EvalContext:
    return EvalContext(
        runtime=Runtime.for_device("cpu"), encoder_key="e", cache_dir=tmp_path / "cache", progress=False
    )


@pytest.fixture
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return backbones.build("r3d_tiny", width=8)[0]


def _split(module: torch.nn.Module) -> tuple[dict, dict]:
    """A module's parameters and its BatchNorm running statistics, as copies."""
    params = {name: p.detach().clone() for name, p in module.named_parameters()}
    stats = {
        name: b.clone()
        for name, b in module.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }
    return params, stats


def test_the_encoder_is_frozen_but_its_batchnorm_statistics_follow_the_training_clips(
    tmp_path, videos, encoder
):
    before = weights_fingerprint(encoder)
    params, stats = _split(encoder)
    probe = fit_linear_on_clips(encoder, _benchmark(tmp_path, videos), _context(tmp_path))
    assert isinstance(probe, FrozenEncoderProbe)
    trained_params, trained_stats = _split(probe.encoder)
    for name, value in params.items():
        assert torch.equal(trained_params[name], value), f"{name} must not be trained"
    moved = [name for name, value in stats.items() if not torch.allclose(trained_stats[name], value)]
    assert len(moved) == len(stats) > 0, "every BatchNorm's running statistics are updated in train mode"
    assert int(probe.encoder.stem[1].num_batches_tracked) == 3 * 2, "3 epochs of 2 batches of 4 videos"
    assert probe.classifier.weight.abs().sum() > 0 and probe.classifier.bias.abs().sum() > 0
    assert weights_fingerprint(encoder) == before, (
        "the caller's encoder (weights and statistics) is untouched"
    )


def test_backbone_bn_eval_keeps_the_statistics(tmp_path, videos, encoder):
    _, stats = _split(encoder)
    probe = fit_linear_on_clips(encoder, _benchmark(tmp_path, videos, backbone_bn="eval"), _context(tmp_path))
    for name, value in _split(probe.encoder)[1].items():
        assert torch.equal(value, stats[name]), name
    assert probe.classifier.weight.abs().sum() > 0, "the classifier still learns"


def test_the_test_score_is_the_mean_of_each_views_softmax_computed_one_by_one(tmp_path, videos, encoder):
    benchmark = _benchmark(tmp_path, videos)
    probe = fit_linear_on_clips(encoder, benchmark, _context(tmp_path))
    probabilities, labels = score_on_views(probe, benchmark, _context(tmp_path))
    views = ViewDataset(
        videos["val"], frames=4, stride=2, crop=32, short_side=32, temporal_views=2, spatial_views=3
    )
    probe.eval()
    with torch.no_grad():  # each of a video's 6 views on its own, softmax, then the mean
        expected = torch.stack(
            [
                torch.stack([probe(clip[None])[0].softmax(dim=-1) for clip in item["clips"]]).mean(dim=0)
                for item in views
            ]
        )
    assert probabilities.shape == (4, 2)
    torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [item["label"] for item in views]
    # the whole protocol through evaluate: the same seed trains the same probe, so the same score
    metrics = evaluate(encoder, benchmark, encoder_key="e", cache_dir=tmp_path / "cache", progress=False)
    top1 = 100.0 * (expected.argmax(dim=1) == labels).double().mean().item()
    assert metrics["eval.bright.linear_slowfast.top1"] == pytest.approx(top1)
    assert metrics["eval.bright.linear_slowfast.top5"] == 100.0, "top-5 of 2 classes is top-2"
    assert metrics["eval.bright.linear_slowfast.skipped"] == 0.0
    assert not (tmp_path / "cache").exists(), "the protocol caches no features"


def test_the_two_linear_protocols_log_different_metrics(tmp_path, videos, encoder):
    cached = _benchmark(tmp_path, videos, "linear", epochs=5, batch_size=8, warmup_epochs=0)
    clips = _benchmark(tmp_path, videos, epochs=1)
    assert (cached.name, clips.name) == ("bright", "bright")
    names = [
        set(evaluate(encoder, b, encoder_key="e", cache_dir=tmp_path / "cache", progress=False))
        for b in (cached, clips)
    ]
    assert names[0] == {f"eval.bright.linear.{m}" for m in ("top1", "top5", "skipped")}
    assert names[1] == {f"eval.bright.linear_slowfast.{m}" for m in ("top1", "top5", "skipped")}


def test_slowfast_schedule_is_one_cosine_with_a_warmup_to_its_value():
    settings = LinearSlowFastSpec(epochs=60, lr=0.5, warmup_epochs=8)
    at_warmup_end = 0.25 * (1 + math.cos(math.pi * 8 / 60))  # 0.5 · ½(1 + cos(π·8/60))
    assert slowfast_lr(0.0, settings) == 0.0
    assert slowfast_lr(4.0, settings) == pytest.approx(at_warmup_end / 2)
    assert slowfast_lr(8.0, settings) == pytest.approx(at_warmup_end), "no restart after the warmup"
    assert slowfast_lr(30.0, settings) == pytest.approx(0.25)
    assert slowfast_lr(60.0, settings) == pytest.approx(0.0, abs=1e-12)


def test_the_shipped_benchmark_is_slowfasts_linear_k400(monkeypatch):
    monkeypatch.setenv("RHO_DATA", "/nonexistent")
    benchmark = load_benchmark(REPO / "benchmarks" / "k400_linear_slowfast.yaml", check_files=False)
    s, v = benchmark.settings, benchmark.views
    assert benchmark.metric("top1") == "eval.k400.linear_slowfast.top1"
    assert (s.epochs, s.lr, s.batch_size, s.weight_decay, s.momentum, s.warmup_epochs) == (
        60,
        0.5,
        64,
        0.0,
        0.9,
        8,
    )
    assert (s.train_crop, s.backbone_bn, s.augment.color_p, s.augment.grayscale_p) == (224, "train", 0.0, 0.0)
    # NUM_FRAMES 8, SAMPLING_RATE 8 at TARGET_FPS 30: every 9th frame of a 30 fps grid
    assert (v.frames, v.fps, v.stride, v.crop, v.short_side, v.test_temporal, v.test_spatial) == (
        8,
        30,
        9,
        256,
        256,
        10,
        3,
    )


def test_the_registry_and_the_benchmark_schema_name_the_same_protocols(tmp_path, videos):
    assert set(PROTOCOLS) == set(PROTOCOL_SPECS)
    assert all(PROTOCOLS[name].settings is PROTOCOL_SPECS[name] for name in PROTOCOLS)
    with pytest.raises(ConfigError, match="backbone_bn"):
        _benchmark(tmp_path, videos, backbone_bn="frozen")
