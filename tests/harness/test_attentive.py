"""The attentive probe: the pooler's arithmetic, the view layout, learning where mean pooling cannot,
and ``evaluate`` end to end on real mp4 videos with a video ViT (token features cached once)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from videos import brightness_manifests

from harness import backbones
from harness.eval import evaluate, load_benchmark
from harness.eval.attentive import (
    AttentiveClassifier,
    CrossAttentionPooler,
    NoTokens,
    attentive_probe,
    probe_heads,
    samples,
)
from harness.eval.features import TokensTooLarge, _check_token_memory
from harness.eval.spec import AttentiveSpec

ROOT = Path(__file__).resolve().parents[2]


def test_the_pooler_is_one_query_attending_to_layer_normed_tokens():
    torch.manual_seed(0)
    pooler = CrossAttentionPooler(dim=8, heads=2, mlp_ratio=2.0)
    tokens = torch.randn(3, 5, 8)
    # written out: LayerNorm on the tokens, per-head softmax(q k / sqrt(d)) v, projection, residual MLP
    normed = F.layer_norm(tokens, (8,), pooler.norm1.weight, pooler.norm1.bias)
    q = pooler.q(pooler.query[0, 0])  # [8]
    k, v = pooler.kv(normed).split(8, dim=-1)  # [3, 5, 8] each
    heads = []
    for h in range(2):
        part = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(k[..., part] @ q[part] / math.sqrt(4), dim=-1)  # [3, 5]
        heads.append((weights[..., None] * v[..., part]).sum(dim=1))
    pooled = pooler.query[0, 0] + pooler.proj(torch.cat(heads, dim=-1))
    expected = pooled + pooler.mlp(pooler.norm2(pooled))
    assert torch.allclose(pooler(tokens), expected, atol=1e-6)
    # a set function: the order of the tokens does not matter
    assert torch.allclose(pooler(tokens[:, torch.randperm(5)]), expected, atol=1e-6)


def test_temporal_views_are_concatenated_per_spatial_view():
    videos, temporal, spatial, length, dim = 2, 3, 2, 4, 5
    tokens = torch.zeros(videos, temporal * spatial, length, dim)
    for n in range(videos):
        for t in range(temporal):
            for s in range(spatial):
                tokens[n, t * spatial + s] = 100 * n + 10 * t + s  # views are temporal-major
    out = samples(tokens, temporal)
    assert out.shape == (videos, spatial, temporal * length, dim)
    for n in range(videos):
        for s in range(spatial):
            for t in range(temporal):
                block = out[n, s, t * length : (t + 1) * length]
                assert torch.all(block == 100 * n + 10 * t + s)


def test_the_probe_finds_one_informative_token_among_noise():
    # the class sits in one token at a random place among 32 noisy ones, which a marker feature
    # (the last) flags: averaging the tokens dilutes it 32-fold, attention picks it out
    generator = torch.Generator().manual_seed(0)

    def make(videos):
        labels = torch.arange(videos) % 4
        tokens = torch.randn(videos, 1, 32, 16, generator=generator)
        codes = torch.eye(16)[:4] * 4
        codes[:, -1] = 8  # the marker
        where = torch.randint(0, 32, (videos,), generator=generator)
        tokens[torch.arange(videos), 0, where] = codes[labels] + 0.1 * torch.randn(
            videos, 16, generator=generator
        )
        return tokens.half(), labels

    train, train_labels = make(256)
    test, test_labels = make(128)
    settings = AttentiveSpec(epochs=40, lr=3e-3, batch_size=32, weight_decay=0.01)
    scores = attentive_probe(train, train_labels, test, test_labels, settings, heads=2)
    assert scores["top1"] >= 95.0, scores
    # the mean of the tokens carries 1/32 of the code under noise of sd 1/sqrt(32): a linear
    # classifier on it stays far below
    mean_scores = attentive_probe(
        train.float().mean(dim=2, keepdim=True), train_labels, test.float().mean(dim=2, keepdim=True),
        test_labels, settings, heads=2,
    )  # fmt: skip
    assert mean_scores["top1"] < scores["top1"] - 20, (mean_scores, scores)


def test_heads_default_to_the_encoders_then_width_over_64():
    settings = AttentiveSpec()
    assert probe_heads(torch.nn.Linear(1, 1), 192, settings) == 3
    vit = torch.nn.Linear(1, 1)
    vit.num_heads = 4
    assert probe_heads(vit, 192, settings) == 4
    assert probe_heads(vit, 192, AttentiveSpec(heads=6)) == 6
    with pytest.raises(ValueError, match="heads 5 must divide the token width 192"):
        AttentiveClassifier(192, 10, heads=5)


def test_token_features_that_would_not_fit_are_refused_with_their_size():
    first = torch.zeros(1, 2, 1568, 1024, dtype=torch.float16)  # ViT-L, 16x224x224, 2 views
    with pytest.raises(TokensTooLarge, match=r"240000 videos x 2 views x 1568 tokens x 1024 .* GiB"):
        _check_token_memory(first, 240_000, "k400/train.csv")


@pytest.fixture(scope="module")
def brightness(tmp_path_factory):
    return brightness_manifests(tmp_path_factory.mktemp("bright"), blocks=8)


def _benchmark(folder: Path, data: dict[str, Path]) -> object:
    path = folder / "attentive.yaml"
    path.write_text(
        f"name: bright\ndataset: custom\nprotocol: attentive\ntrain: {data['train']}\nval: {data['val']}\n"
        "views: {frames: 4, stride: 2, crop: 32, short_side: 36, train_temporal: 2, test_temporal: 2,"
        " test_spatial: 3}\nattentive: {epochs: 30, lr: 3.0e-3, batch_size: 8}\n"
    )
    return load_benchmark(path)


def test_evaluate_runs_the_attentive_protocol_on_a_vit_and_extracts_tokens_once(tmp_path, brightness):
    torch.manual_seed(0)
    vit = backbones.build("vit_tiny")[0]
    calls = []
    vit.forward_tokens = _counting(vit.forward_tokens, calls)
    benchmark = _benchmark(tmp_path, brightness)
    cache = tmp_path / "cache"
    first = evaluate(vit, benchmark, encoder_key="vit", cache_dir=cache, progress=False)
    assert set(first) == {
        "eval.bright.attentive.top1",
        "eval.bright.attentive.top5",
        "eval.bright.attentive.skipped",
    }
    assert first["eval.bright.attentive.top1"] == 100.0  # bright vs dark: any encoder's tokens separate them
    extracted = len(calls)
    assert extracted > 0 and len(list(cache.glob("*.pt"))) == 2  # train and test token files
    second = evaluate(vit, benchmark, encoder_key="vit", cache_dir=cache, progress=False)
    assert second == first and len(calls) == extracted  # from the cache: the encoder did not run


def test_an_encoder_without_tokens_is_refused_by_name(tmp_path, brightness):
    cnn = backbones.build("r3d_tiny", width=8)[0]
    with pytest.raises(
        NoTokens,
        match=r"protocol attentive needs token features.*gives none; use a video ViT backbone \(vit_tiny",
    ):
        evaluate(cnn, _benchmark(tmp_path, brightness), encoder_key="cnn", cache_dir=tmp_path, progress=False)


def test_the_shipped_synthetic_benchmark_loads():
    benchmark = load_benchmark(ROOT / "benchmarks" / "synth_attentive.yaml", check_files=False)
    assert benchmark.protocol == "attentive" and benchmark.settings.epochs == 40


def _counting(forward, calls):
    def wrapped(clips, keep=None):
        calls.append(clips.shape[0])
        return forward(clips, keep)

    return wrapped


def test_pretraining_refuses_an_attentive_benchmark_on_a_cnn_before_any_compute(tmp_path, brightness):
    from harness.config import ConfigError, load_experiment
    from harness.train.prepare import check_other_manifests

    benchmark = tmp_path / "b" / "attentive.yaml"
    benchmark.parent.mkdir()
    _benchmark(benchmark.parent, brightness)
    overrides = [f"data.train={brightness['train']}", f"eval.benchmarks=[{benchmark}]"]
    check_other_manifests(
        load_experiment(overrides=[*overrides, "backbone.name=vit_tiny"], check_files=False)
    )
    with pytest.raises(
        ConfigError, match=r"backbone.name = 'r3d_tiny' is not allowed: a backbone that gives token"
    ):
        check_other_manifests(
            load_experiment(overrides=[*overrides, "backbone.name=r3d_tiny"], check_files=False)
        )
