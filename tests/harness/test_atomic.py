"""Atomic writes: a failed or killed writer leaves the previous file whole, and its temp file is cleaned up."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.atomic import atomic_file, remove_stale_temp_files, temp_path
from harness.data.manifest import read_manifest, write_manifest


def test_a_write_that_raises_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "state.json"
    with atomic_file(target) as handle:
        handle.write("old")
    assert target.read_text() == "old"
    with pytest.raises(ValueError), atomic_file(target) as handle:
        handle.write("half of the new")
        raise ValueError("failed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_killed_writer_leaves_the_old_file_and_the_next_write_removes_its_temp_file(tmp_path):
    target = tmp_path / "last.bin"
    target.write_bytes(b"previous")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from harness.atomic import atomic_file\n"
            "with atomic_file(sys.argv[1], 'wb') as f:\n"
            "    f.write(b'x' * 100000); f.flush(); print('writing', flush=True); time.sleep(60)\n",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    stale = target.with_name(f".{target.name}.{writer.pid}.tmp")
    assert stale.stat().st_size == 100000, "the killed writer's temp file is left behind"
    assert target.read_bytes() == b"previous", "the target never sees a partial write"

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_temp = target.with_name(f".{target.name}.{alive.pid}.tmp")
        live_temp.write_bytes(b"in progress")
        with atomic_file(target, "wb") as handle:  # the next write cleans up after the dead writer
            handle.write(b"next")
        assert target.read_bytes() == b"next"
        assert not stale.exists(), "a dead writer's temp file is removed"
        assert live_temp.exists(), "a live writer's temp file is left alone"
        own_temp = temp_path(target)
        own_temp.write_bytes(b"mine")
        remove_stale_temp_files(target)
        assert own_temp.exists(), "this process's own temp file is left alone"
    finally:
        alive.kill()
        alive.wait()


def test_manifest_rewrite_is_atomic(tmp_path):
    path = tmp_path / "train.csv"
    write_manifest(path, [{"path": str(tmp_path / "a.mp4"), "label": 0}])

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("bad row")

    rows = [{"path": str(tmp_path / "b.mp4"), "label": 1}, {"path": Unprintable(), "label": 2}]
    with pytest.raises(RuntimeError, match="bad row"):  # the first row is written before the second fails
        write_manifest(path, rows)
    entries = read_manifest(path, check_files=False)
    assert [(Path(e.path).name, e.label) for e in entries] == [("a.mp4", 0)]
    assert [p.name for p in tmp_path.iterdir()] == ["train.csv"]
