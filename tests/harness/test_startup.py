"""Start-up: the light commands import no heavy package (torch, mlflow, optuna, pandas, ...).

Read from ``python -X importtime`` of a fresh process, which lists every module imported; no
timing is asserted here (``rho bench startup`` measures the time).
"""

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "pytorchvideo", "mlflow", "optuna", "pandas", "matplotlib", "av")


def imported_modules(*args: str) -> set[str]:
    """The top-level packages a fresh ``python ARGS`` imports."""
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert len(lines) > 50, "importtime printed no module list"
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines}


@pytest.fixture
def class_tree(tmp_path):
    for name in ("walk/a.mp4", "jump/b.m4v"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return tmp_path


@pytest.mark.parametrize(
    "args", [["--help"], ["config", "keys"], ["data", "import", "folders", "{root}", "{root}"]]
)
def test_light_commands_import_no_heavy_package(args, class_tree):
    modules = imported_modules("-m", "harness", *(arg.format(root=class_tree) for arg in args))
    assert "harness" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_the_check_sees_a_heavy_import():
    """Guards the test above against passing vacuously: a command that trains does import torch."""
    modules = imported_modules("-c", "import harness.data; harness.data.MultiClipDataset")
    assert {"torch", "av"} <= modules


def test_help_imports_not_even_numpy():
    """``rho --help`` builds every parser; ``data import``'s default extensions come from
    ``harness.data.formats``, not the importers (which pull in numpy through the manifest)."""
    modules = imported_modules("-m", "harness", "--help")
    assert "numpy" not in modules
