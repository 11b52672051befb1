"""Test-wide set-up: every test gets private HOME, TORCH_HOME and MPLCONFIGDIR folders."""

import os

import pytest


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    for var, sub in (("HOME", ""), ("TORCH_HOME", "torch"), ("MPLCONFIGDIR", "mpl")):
        path = home / sub
        path.mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
