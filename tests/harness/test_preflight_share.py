"""Training's manifest check at Kinetics scale: once per process for an unchanged manifest, and
under torch.distributed on rank 0 only, its verdict shared so that every rank raises the same error.

The metadata calls are counted on real files (hard links of one real mp4): each row's check is
one ``lstat``, so a check that is skipped shows as rows' worth of ``lstat`` calls not made.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.config import load_experiment
from harness.data.manifest import ManifestError, checked_manifest, forget_checked_manifests
from harness.train.prepare import preflight_manifests

ROWS = 60
WORLD_SIZE = 2


@pytest.fixture(autouse=True)
def _fresh_cache():
    forget_checked_manifests()
    yield
    forget_checked_manifests()


def _dataset(folder: Path, video: Path, rows: int = ROWS, missing: int | None = None) -> Path:
    """``folder/train.csv`` of ``rows`` hard links of ``video`` in two class folders; row
    ``missing`` (if any) names a file that does not exist."""
    lines = ["path,label"]
    for index in range(rows):
        name = f"class{index % 2}/v{index:03d}.mp4"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if index != missing:
            os.link(video, folder / name)
        lines.append(f"{name},{index % 2}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder / "train.csv"


def _experiment(train: Path, val: Path | None = None, benchmarks: list[str] | None = None):
    overrides: dict[str, object] = {"data.train": str(train)}
    if val is not None:
        overrides["data.val"] = str(val)
    if benchmarks:
        overrides["eval.benchmarks"] = benchmarks
    return load_experiment(overrides=overrides, check_files=False)


class Lstats:
    """Counts ``os.lstat`` calls (a row's check is one; resolving a folder a few)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        real = os.lstat

        def counted(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(os, "lstat", counted)

    def of(self, function) -> int:
        self.count = 0
        function()
        return self.count


def test_a_second_trial_takes_the_checked_rows_and_a_changed_manifest_is_checked_again(
    tmp_path, index_videos, monkeypatch
):
    train = _dataset(tmp_path / "data", index_videos["short"])
    val = _dataset(tmp_path / "val", index_videos["short"], rows=10)
    benchmark = tmp_path / "bench.yaml"
    benchmark.write_text(
        f"name: tiny\nprotocol: knn\ntrain: {val}\nval: {val}\nviews: {{frames: 4, stride: 2, crop: 32}}\n"
    )
    experiment = _experiment(train, val, [str(benchmark)])
    lstats = Lstats(monkeypatch)

    roots = 4 * (len(tmp_path.parts) + 3)  # resolving the 4 manifests' roots, on a hit too
    first = lstats.of(lambda: preflight_manifests(experiment))
    assert first >= ROWS + 10  # every row of data.train and data.val looked up
    rows = preflight_manifests(experiment)
    assert len(rows) == ROWS and rows[3].path == tmp_path / "data" / "class1" / "v003.mp4"
    again = lstats.of(lambda: preflight_manifests(experiment))
    assert again <= roots < ROWS + 10, (first, again)  # the resolved roots only, no row

    # A rewrite (new mtime) of data.train checks it again, and finds what changed
    (tmp_path / "data" / "class0" / "v004.mp4").unlink()
    assert lstats.of(lambda: preflight_manifests(experiment)) <= roots  # unchanged manifest: trusted
    train.write_text(train.read_text())
    os.utime(train, ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse clock cannot hide it
    with pytest.raises(ManifestError, match=r"train.csv:6: video file .*v004.mp4 does not exist"):
        preflight_manifests(experiment)

    # A refusal is never kept: each trial reads the bad manifest again
    assert lstats.of(lambda: pytest.raises(ManifestError, preflight_manifests, experiment)) >= 5


def test_the_cache_key_holds_the_options_that_change_the_verdict(tmp_path, index_videos, monkeypatch):
    """The data-root rule, the class count and the root are part of the key: a manifest checked
    under looser options is checked again under stricter ones."""
    train = _dataset(tmp_path, index_videos["short"], rows=6)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.mp4"
    os.link(index_videos["short"], outside)
    train.write_text(train.read_text() + f"{outside},1\n")
    assert len(checked_manifest(train, allow_outside_root=True)) == 7
    with pytest.raises(ManifestError, match="outside the data root"):
        checked_manifest(train, allow_outside_root=False)
    (tmp_path / "classes.txt").write_text("a\n")  # declares one class: label 1 is past it
    with pytest.raises(ManifestError, match=r"label 1 is not a class index"):
        checked_manifest(train, allow_outside_root=True)
    (tmp_path / "classes.txt").unlink()
    lstats = Lstats(monkeypatch)
    assert lstats.of(lambda: checked_manifest(train, allow_outside_root=True)) <= len(tmp_path.parts) + 3
    with pytest.raises(ManifestError, match="does not exist"):  # another root: other paths, checked
        checked_manifest(train, root=tmp_path / "class0")


def _rank(rank: int, init_file: str, folder: str) -> None:
    """One gloo rank: the good manifest, then one with a missing video, then a missing benchmark
    file; what it met and how many ``lstat`` calls each took go to ``rank<N>.json``."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    results: dict[str, object] = {}
    calls = [0]
    real = os.lstat

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    os.lstat = counted
    try:
        root = Path(folder)
        for name, experiment in (
            ("good", _experiment(root / "good" / "train.csv")),
            ("missing_video", _experiment(root / "missing" / "train.csv")),
            (
                "missing_benchmark",
                _experiment(root / "good" / "train.csv", benchmarks=[str(root / "none.yaml")]),
            ),
        ):
            calls[0] = 0
            try:
                rows = preflight_manifests(experiment)
                results[name] = {"rows": len(rows), "lstat": calls[0]}
            except Exception as exc:
                results[name] = {"error": type(exc).__name__, "message": str(exc), "lstat": calls[0]}
    finally:
        os.lstat = real
        dist.destroy_process_group()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(results))


def test_under_two_ranks_only_rank_0_looks_files_up_and_every_rank_raises_its_error(tmp_path, index_videos):
    _dataset(tmp_path / "good", index_videos["short"])
    _dataset(tmp_path / "missing", index_videos["short"], missing=7)
    context = mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish within 180 s")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE))

    assert rank0["good"]["rows"] == rank1["good"]["rows"] == ROWS
    assert rank0["good"]["lstat"] >= ROWS  # rank 0 looks every row up
    root = 2 * (len(tmp_path.parts) + 3)  # resolving the manifest's root, and torch's own
    assert rank1["good"]["lstat"] <= root < ROWS, rank1  # rank 1 looks no row up

    for case, kind, words in (
        ("missing_video", "ManifestError", "train.csv:9: video file"),
        ("missing_benchmark", "ConfigError", "none.yaml"),
    ):
        assert rank0[case]["error"] == rank1[case]["error"] == kind, (rank0[case], rank1[case])
        assert rank0[case]["message"] == rank1[case]["message"]
        assert words in rank0[case]["message"]
    assert rank1["missing_video"]["lstat"] <= root
