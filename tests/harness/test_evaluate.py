"""Evaluation protocols: kNN and linear probe on known features, the feature cache, and
end-to-end runs of ``evaluate`` on real mp4 videos (bright vs dark) with a random r3d_tiny."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from videos import brightness_manifests, brightness_video

from harness import backbones
from harness.data import ManifestError, MultiClipDataset, train_transform, write_manifest
from harness.data.views import ViewDataset
from harness.eval import (
    Benchmark,
    FeatureCache,
    FinetuneSpec,
    KnnSpec,
    LinearSpec,
    classifier_network,
    evaluate,
    extract_features,
    fit_linear,
    knn_monitor,
    knn_probe,
    knn_scores,
    linear_probe,
    load_benchmark,
    train_classifier,
    video_embeddings,
    weights_fingerprint,
)
from harness.eval import finetune as finetune_module

FAST_LINEAR = LinearSpec(epochs=30, lr=0.1, batch_size=64, weight_decay=0.0, momentum=0.9, warmup_epochs=0)


# --- kNN ----------------------------------------------------------------------------------------


def _direct_knn_scores(train, train_labels, test, classes, k, temperature):
    """The weighted vote written out: normalise views, average, cosine, top k, sum exp(s/τ) per class."""

    def embed(views):
        mean = sum(view / view.norm() for view in views) / len(views)
        return mean / mean.norm()

    scores = torch.zeros(len(test), classes)
    for i, views in enumerate(test):
        query = embed(views)
        similarities = sorted(
            ((float(query @ embed(t)), int(label)) for t, label in zip(train, train_labels, strict=True)),
            reverse=True,
        )
        for similarity, label in similarities[:k]:
            scores[i, label] += math.exp(similarity / temperature)
    return scores


@pytest.mark.parametrize("k", [5, 100])
def test_knn_scores_match_the_weighted_vote_written_out(k):
    generator = torch.Generator().manual_seed(0)
    # views of very different norms: averaging without per-view normalisation would differ
    train = torch.randn(30, 3, 6, generator=generator) * torch.rand(30, 3, 1, generator=generator) * 10
    test = torch.randn(7, 2, 6, generator=generator) * torch.rand(7, 2, 1, generator=generator) * 10
    labels = torch.randint(0, 4, (30,), generator=generator)
    scores = knn_scores(video_embeddings(train), labels, video_embeddings(test), 4, k=k, temperature=0.1)
    expected = _direct_knn_scores(train, labels, test, 4, min(k, 30), 0.1)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)


def _clustered(
    per_class: int, classes: int, views: int, noise: float, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, V, 16] around one-hot class directions, labels [N]."""
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.eye(16)[labels] * 2
    return centres[:, None] + noise * torch.randn(len(labels), views, 16, generator=generator), labels


def test_knn_on_separable_features_is_perfect():
    generator = torch.Generator().manual_seed(1)
    train, train_labels = _clustered(10, 4, 2, 0.2, generator)
    test, test_labels = _clustered(5, 4, 3, 0.2, generator)
    assert knn_probe(train, train_labels, test, test_labels, KnnSpec(k=200, temperature=0.07)) == {
        "top1": 100.0,
        "top5": 100.0,
    }


# --- linear -------------------------------------------------------------------------------------


def test_linear_probe_separates_separable_features():
    generator = torch.Generator().manual_seed(2)
    train, train_labels = _clustered(50, 5, 1, 0.5, generator)
    test, test_labels = _clustered(20, 5, 1, 0.5, generator)
    scores = linear_probe(train, train_labels, test, test_labels, FAST_LINEAR)
    assert scores["top1"] >= 98.0 and scores["top5"] == 100.0
    fits = [fit_linear(train[:, 0], train_labels, 5, FAST_LINEAR, seed=7) for _ in range(2)]
    assert torch.equal(fits[0].weight, fits[1].weight), "deterministic given the seed"


def test_linear_probe_on_random_labels_is_at_chance():
    generator = torch.Generator().manual_seed(3)
    train, test = torch.randn(400, 1, 16, generator=generator), torch.randn(400, 1, 16, generator=generator)
    train_labels, test_labels = (
        torch.randint(0, 4, (400,), generator=generator),
        torch.randint(0, 4, (400,), generator=generator),
    )
    scores = linear_probe(train, train_labels, test, test_labels, FAST_LINEAR)
    assert 15.0 < scores["top1"] < 35.0, "chance is 25%"
    assert scores["top5"] == 100.0, "top-5 of 4 classes is top-4"


def test_averaging_noisy_test_views_recovers_the_label():
    generator = torch.Generator().manual_seed(4)
    train_labels, test_labels = torch.arange(2).repeat(100), torch.arange(2).repeat(100)
    sign = lambda labels: (2.0 * labels - 1)[:, None, None]  # noqa: E731
    train = sign(train_labels) * torch.eye(4)[0] + 0.5 * torch.randn(200, 1, 4, generator=generator)
    test = 0.5 * sign(test_labels) * torch.eye(4)[0] + torch.randn(
        200, 15, 4, generator=generator
    )  # weak signal per view
    single = linear_probe(train, train_labels, test[:, :1], test_labels, FAST_LINEAR)["top1"]
    averaged = linear_probe(train, train_labels, test, test_labels, FAST_LINEAR)["top1"]
    assert single < 85.0 and averaged > 92.0, (single, averaged)


# --- real videos --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brightness_data(tmp_path_factory) -> dict[str, Path]:
    """train.csv (8 videos) and val.csv (4 videos), half bright (label 0), half dark (label 1)."""
    return brightness_manifests(tmp_path_factory.mktemp("brightness"), blocks=8)


def _benchmark(
    tmp_path: Path, data: dict[str, Path], protocol: str, settings: str, **views: int
) -> Benchmark:
    """A benchmark file of 4-frame clips, 32 px crops, 2 × 3 test views (overridable), loaded."""
    view_settings = {
        "frames": 4,
        "stride": 2,
        "crop": 32,
        "short_side": 36,
        "test_temporal": 2,
        "test_spatial": 3,
        **views,
    }
    path = tmp_path / f"{protocol}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(
        f"name: bright\ndataset: custom\nprotocol: {protocol}\ntrain: {data['train']}\nval: {data['val']}\n"
        f"views: {view_settings}\n{protocol}: {settings}\n".replace("'", "")
    )
    return load_benchmark(path)


class ForwardCounter:
    """Counts forward calls of a module through a hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1


@pytest.fixture
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return backbones.build("r3d_tiny", width=8)[0]


LINEAR = "{epochs: 30, lr: 0.1, batch_size: 16, warmup_epochs: 0}"


def test_linear_and_knn_separate_bright_from_dark_videos(tmp_path, brightness_data, encoder):
    cache = tmp_path / "cache"
    linear = evaluate(
        encoder,
        _benchmark(tmp_path, brightness_data, "linear", LINEAR),
        encoder_key="e",
        cache_dir=cache,
        progress=False,
    )
    knn = evaluate(
        encoder,
        _benchmark(tmp_path, brightness_data, "knn", "{k: 3}"),
        encoder_key="e",
        cache_dir=cache,
        progress=False,
    )
    assert linear == {
        "eval.bright.linear.top1": 100.0,
        "eval.bright.linear.top5": 100.0,
        "eval.bright.linear.skipped": 0.0,
    }
    assert knn == {
        "eval.bright.knn.top1": 100.0,
        "eval.bright.knn.top5": 100.0,
        "eval.bright.knn.skipped": 0.0,
    }


def test_extract_features_shapes_labels_and_mode(brightness_data, encoder):
    dataset = ViewDataset(
        brightness_data["val"], frames=4, stride=2, crop=32, temporal_views=2, spatial_views=3
    )
    encoder.train()
    features, labels = extract_features(encoder, dataset, batch_size=3, progress=False)
    assert features.shape == (4, 6, 32) and features.dtype == torch.float32
    assert labels.tolist() == [0, 1, 0, 1] and encoder.training, "train mode restored"
    with torch.no_grad():
        direct = encoder.eval()(dataset[3]["clips"])
    torch.testing.assert_close(features[3], direct, msg="video 3's views, in view order")


def test_knn_monitor_on_centre_views(brightness_data, encoder):
    views = dict(frames=4, stride=2, crop=32)
    top1 = knn_monitor(
        encoder,
        ViewDataset(brightness_data["train"], **views),
        ViewDataset(brightness_data["val"], **views),
        k=3,
    )
    assert top1 == 100.0


def test_the_cache_skips_the_encoder_until_weights_or_views_change(tmp_path, brightness_data, encoder):
    counter = ForwardCounter(encoder)
    benchmark = _benchmark(tmp_path, brightness_data, "linear", LINEAR)
    run = lambda b: evaluate(encoder, b, encoder_key="e", cache_dir=tmp_path / "cache", progress=False)  # noqa: E731
    first = run(benchmark)
    assert counter.calls > 0 and len(list((tmp_path / "cache").glob("*.pt"))) == 2
    counter.calls = 0
    assert run(benchmark) == first and counter.calls == 0, "second evaluation reads the cache"
    run(_benchmark(tmp_path, brightness_data, "linear", LINEAR, test_temporal=1))
    assert counter.calls == 1, "new test views: only the 4 test videos (one batch) are extracted"
    with torch.no_grad():
        next(encoder.parameters()).add_(0.01)
    counter.calls = 0
    run(benchmark)
    assert counter.calls == 2, "changed weights: train and val (one batch each) extracted again"


def test_a_corrupted_cache_file_is_detected_and_recomputed(tmp_path, brightness_data, encoder, caplog):
    benchmark = _benchmark(tmp_path, brightness_data, "linear", LINEAR)
    cache_dir = tmp_path / "cache"
    first = evaluate(encoder, benchmark, encoder_key="e", cache_dir=cache_dir, progress=False)
    flipped, truncated = sorted(cache_dir.glob("*.pt"))
    data = bytearray(flipped.read_bytes())
    stored = torch.load(flipped, weights_only=True)["features"].numpy().tobytes()
    data[data.find(stored) + 5] ^= 0xFF  # one bit pattern changed inside the features
    flipped.write_bytes(bytes(data))
    assert not torch.load(flipped, weights_only=True)["features"].numpy().tobytes() == stored, (
        "torch.load does not notice"
    )
    truncated.write_bytes(truncated.read_bytes()[:100])
    counter = ForwardCounter(encoder)
    with caplog.at_level(logging.WARNING, logger="harness.eval.features"):
        assert evaluate(encoder, benchmark, encoder_key="e", cache_dir=cache_dir, progress=False) == first
    assert counter.calls == 2 and len(caplog.records) == 2, [r.getMessage() for r in caplog.records]
    cache = FeatureCache(cache_dir)
    dataset = ViewDataset(
        brightness_data["val"], frames=4, stride=2, crop=32, short_side=36, temporal_views=2, spatial_views=3
    )
    key = cache.key(f"e-{weights_fingerprint(encoder)}", dataset)
    assert cache.load(cache.path(f"e-{weights_fingerprint(encoder)}", key), key) is not None, "rewritten"


def test_finetune_trains_a_copy_and_reports_accuracy(tmp_path, brightness_data, encoder, monkeypatch):
    before = weights_fingerprint(encoder)
    trained = []  # the network fine-tuning trains, kept to score it independently below
    train = finetune_module.train_classifier
    monkeypatch.setattr(
        finetune_module,
        "train_classifier",
        lambda model, *args: (trained.append(model), train(model, *args))[1],
    )
    settings = (
        "{epochs: 2, lr: 0.05, batch_size: 4, warmup_epochs: 0, augment: {color_p: 0.0, grayscale_p: 0.0}}"
    )
    benchmark = _benchmark(tmp_path, brightness_data, "finetune", settings, test_spatial=1)
    metrics = evaluate(encoder, benchmark, encoder_key="e", cache_dir=tmp_path / "cache", progress=False)
    assert set(metrics) == {f"eval.bright.finetune.{m}" for m in ("top1", "top5", "skipped")}
    test_views = ViewDataset(
        brightness_data["val"], frames=4, stride=2, crop=32, short_side=36, temporal_views=2, spatial_views=1
    )
    with torch.no_grad():  # each test video: softmax of its 2 views averaged, then the arg max
        correct = [
            int(trained[0].eval()(item["clips"]).softmax(dim=-1).mean(dim=0).argmax()) == item["label"]
            for item in test_views
        ]
    assert metrics["eval.bright.finetune.top1"] == pytest.approx(100.0 * sum(correct) / len(correct))
    assert metrics["eval.bright.finetune.top5"] == 100.0, "top-5 of 2 classes is top-2"
    assert metrics["eval.bright.finetune.top1"] >= 75.0, "bright vs dark is learnt in 2 epochs"
    assert weights_fingerprint(encoder) == before, "the encoder itself is not trained"
    assert not (tmp_path / "cache").exists(), "fine-tuning caches nothing"


def test_finetune_training_is_deterministic_given_the_seed(brightness_data, encoder):
    settings = FinetuneSpec(epochs=1, lr=0.05, batch_size=4)
    dataset = MultiClipDataset(
        brightness_data["train"], clips=1, frames=4, stride=2, transform=train_transform(32, settings.augment)
    )
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = classifier_network(encoder, 2, settings.dropout, frames=4, crop=32)
        train_classifier(model, dataset, settings, seed=3, progress=False)
        states.append(model.state_dict())
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name


# --- unreadable videos ----------------------------------------------------------------------------


def _unreadable_videos(folder: Path, good: Path) -> list[Path]:
    """A truncated mp4 (the first half of ``good``'s bytes) and an empty file."""
    data = good.read_bytes()
    truncated, empty = folder / "truncated.mp4", folder / "empty.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    return [truncated, empty]


@pytest.fixture(scope="module")
def data_with_unreadable(tmp_path_factory) -> dict[str, Path]:
    """Bright/dark manifests, 20 train and 10 val videos, as ``good_train``/``good_val``, and the
    same with a truncated mp4 and an empty file inserted in train (2 of 22) and the truncated one
    in val (1 of 11): under evaluation's 10 % limit."""
    root = tmp_path_factory.mktemp("unreadable")
    rng = np.random.default_rng(1)
    rows = {
        split: [
            {"path": str(brightness_video(root / f"{split}{i}.mp4", i % 2, rng)), "label": i % 2}
            for i in range(count)
        ]
        for split, count in (("train", 20), ("val", 10))
    }
    truncated, empty = _unreadable_videos(root, Path(rows["train"][0]["path"]))
    with_bad = {
        "train": rows["train"][:5]
        + [{"path": str(truncated), "label": 1}]
        + rows["train"][5:]
        + [{"path": str(empty), "label": 0}],
        "val": rows["val"][:3] + [{"path": str(truncated), "label": 0}] + rows["val"][3:],
    }
    manifests = {"truncated": truncated, "empty": empty}
    for split in ("train", "val"):
        manifests[f"good_{split}"] = write_manifest(root / f"good_{split}.csv", rows[split])
        manifests[split] = write_manifest(root / f"{split}.csv", with_bad[split])
    return manifests


def _bad_and_good(data: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    return {"train": data["train"], "val": data["val"]}, {
        "train": data["good_train"],
        "val": data["good_val"],
    }


@pytest.mark.parametrize("protocol, settings", [("linear", LINEAR), ("knn", "{k: 3}")])
def test_unreadable_videos_are_skipped_counted_and_leave_the_scores_of_the_others_unchanged(
    tmp_path, data_with_unreadable, encoder, protocol, settings, capsys
):
    bad, good = _bad_and_good(data_with_unreadable)
    run = lambda data, cache: evaluate(  # noqa: E731
        encoder,
        _benchmark(tmp_path, data, protocol, settings),
        encoder_key="e",
        cache_dir=tmp_path / cache,
        progress=False,
    )
    reference = run(good, "good-cache")
    capsys.readouterr()
    metrics = run(bad, "cache")
    printed = capsys.readouterr().out.splitlines()
    skipped = f"eval.bright.{protocol}.skipped"
    assert metrics[skipped] == 2.0 and reference[skipped] == 0.0, "two distinct files (truncated in both)"
    assert {k: v for k, v in metrics.items() if k != skipped} == {
        k: v for k, v in reference.items() if k != skipped
    }, "the scores are those of the readable videos alone"
    lines = {
        line.split(" videos of ")[1].split(" ")[0]: line for line in printed if "skipped (unreadable)" in line
    }
    assert set(lines) == {str(bad["train"]), str(bad["val"])}, printed
    assert "2 of 22 videos" in lines[str(bad["train"])] and "1 of 11 videos" in lines[str(bad["val"])]
    for manifest, line in lines.items():
        assert f"first: {data_with_unreadable['truncated']}" in line and f"rho data check {manifest}" in line
    capsys.readouterr()
    assert run(bad, "cache") == metrics, "a cache hit counts the same skips"
    assert len([line for line in capsys.readouterr().out.splitlines() if "skipped" in line]) == 2


def test_finetune_skips_and_counts_unreadable_videos(tmp_path, data_with_unreadable, encoder, capsys):
    bad, _ = _bad_and_good(data_with_unreadable)
    settings = "{epochs: 1, lr: 0.05, batch_size: 4, warmup_epochs: 0}"
    benchmark = _benchmark(tmp_path, bad, "finetune", settings, test_spatial=1, test_temporal=1)
    metrics = evaluate(encoder, benchmark, encoder_key="e", cache_dir=tmp_path / "cache", progress=False)
    assert metrics["eval.bright.finetune.skipped"] == 2.0
    out = capsys.readouterr().out
    assert (
        f"2 of 22 videos of {bad['train']} skipped" in out
        and f"1 of 11 videos of {bad['val']} skipped" in out
    )
    assert 0.0 <= metrics["eval.bright.finetune.top1"] <= 100.0


def test_more_unreadable_videos_than_the_limit_are_refused_naming_the_manifest(
    tmp_path, data_with_unreadable, encoder
):
    truncated, empty = data_with_unreadable["truncated"], data_with_unreadable["empty"]
    rows = [{"path": str(p), "label": 0} for p in (truncated, empty)]
    rows.append(
        {"path": str(brightness_video(tmp_path / "one.mp4", 1, np.random.default_rng(0))), "label": 1}
    )
    val = write_manifest(tmp_path / "mostly_bad.csv", rows)
    benchmark = _benchmark(
        tmp_path, {"train": data_with_unreadable["good_train"], "val": val}, "knn", "{k: 3}"
    )
    with pytest.raises(ManifestError) as info:
        evaluate(encoder, benchmark, encoder_key="e", cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert message.startswith(f"{val}: 2 of 3 videos are unreadable") and f"rho data check {val}" in message
    only_bad = write_manifest(tmp_path / "all_bad.csv", rows[:2])
    benchmark = _benchmark(
        tmp_path, {"train": data_with_unreadable["good_train"], "val": only_bad}, "knn", "{k: 3}"
    )
    with pytest.raises(ManifestError, match="none of the 2 videos could be read"):
        evaluate(encoder, benchmark, encoder_key="e", cache_dir=tmp_path / "cache", progress=False)


def test_knn_monitor_leaves_unreadable_videos_out_and_warns_once(data_with_unreadable, encoder, caplog):
    views = dict(frames=4, stride=2, crop=32)
    bad, good = _bad_and_good(data_with_unreadable)
    reference = knn_monitor(
        encoder, ViewDataset(good["train"], **views), ViewDataset(good["val"], **views), k=3
    )
    with caplog.at_level(logging.WARNING, logger="harness.eval.monitor"):
        for _ in range(2):  # two epochs: each file warned about once
            top1 = knn_monitor(
                encoder, ViewDataset(bad["train"], **views), ViewDataset(bad["val"], **views), k=3
            )
            assert top1 == reference
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("skipping unreadable video" in w for w in warned), warned
    assert {data_with_unreadable["truncated"], data_with_unreadable["empty"]} == {
        next(p for p in (data_with_unreadable["truncated"], data_with_unreadable["empty"]) if str(p) in w)
        for w in warned
    }
