"""Shipped specs and benchmarks: the current folder's files come first, the shipped ones serve otherwise."""

from pathlib import Path

from harness.resources import copy_shipped, locate, shipped_files, shipped_root
from harness.study.spec import load_study


def test_a_relative_path_prefers_the_current_folder_then_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped_demo = shipped_root() / "studies" / "demo.yaml"
    assert locate("studies/demo.yaml") == shipped_demo
    assert locate("benchmarks/synth_linear.yaml") == shipped_root() / "benchmarks" / "synth_linear.yaml"
    assert locate("studies/nope.yaml") == Path("studies/nope.yaml")  # the caller's error names it
    assert locate("other/demo.yaml") == Path("other/demo.yaml")  # only studies/ and benchmarks/ ship

    own = tmp_path / "studies" / "demo.yaml"
    own.parent.mkdir()
    own.write_text(shipped_demo.read_text().replace("name: demo", "name: my-demo"))
    assert locate("studies/demo.yaml") == Path("studies/demo.yaml")
    # Its relative experiment is not in this folder: the shipped studies/experiments/demo.yaml serves.
    assert load_study("studies/demo.yaml", check_files=False).name == "my-demo"


def test_init_copies_every_shipped_file_and_keeps_edits(tmp_path):
    files = shipped_files(shipped_root())
    assert Path("studies/demo.yaml") in files and Path("benchmarks/speed/decode.py") in files
    assert not [f for f in files if f.suffix in {".md", ".json"}]  # results stay out
    assert len(copy_shipped(tmp_path)) == len(files)
    edited = tmp_path / "studies" / "demo.yaml"
    edited.write_text("# mine\n")
    assert copy_shipped(tmp_path) == []
    assert edited.read_text() == "# mine\n"
    assert edited in copy_shipped(tmp_path, overwrite=True) and edited.read_text() != "# mine\n"
