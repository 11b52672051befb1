"""Test-wide set-up: private HOME, TORCH_HOME and MPLCONFIGDIR folders for every test, a real
MLflow store, and the shared data fixtures (small real mp4 files, a tiny synthetic dataset)."""

import os
import signal
import sys
from pathlib import Path

import pytest
from videos import write_index_video

from harness.data.manifest import write_manifest

# A shell that starts the suite in the background (`make test &`, nohup, some CI runners) makes
# it ignore SIGINT, and every process it starts inherits that: the tests that press Ctrl-C
# (SIGINT) on `rho ui`, `rho dashboard` or a study would then wait in vain. Catching SIGINT here
# makes the children start with the default disposition again, as in a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    for var, sub in (("HOME", ""), ("TORCH_HOME", "torch"), ("MPLCONFIGDIR", "mpl")):
        path = home / sub
        path.mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory):
    """An empty MLflow sqlite store, migrated once per session (creating one takes seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(_mlflow_template, tmp_path) -> str:
    """A private, real MLflow sqlite store for one test."""
    import shutil

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def index_videos(tmp_path_factory) -> dict[str, Path]:
    """Three index videos (10 fps): 100 frames (GOP 12), 150 frames (one long GOP), 12 frames (short)."""
    root = tmp_path_factory.mktemp("index_videos")
    return {
        "long": write_index_video(root / "long.mp4", 100, fps=10, gop=12),
        "one_gop": write_index_video(root / "one_gop.mp4", 150, fps=10),
        "short": write_index_video(root / "short.mp4", 12, fps=10),
    }


@pytest.fixture(scope="session")
def index_manifest(index_videos, tmp_path_factory) -> Path:
    """A manifest of the long and one-GOP index videos, labels 0 and 1."""
    out = tmp_path_factory.mktemp("manifest") / "train.csv"
    return write_manifest(
        out,
        [{"path": str(index_videos["long"]), "label": 0}, {"path": str(index_videos["one_gop"]), "label": 1}],
    )


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic dataset (12 train / 8 val videos of 1 s at 32 px) for end-to-end tests."""
    from harness.data.synth import SynthSpec, synthesize

    root = tmp_path_factory.mktemp("tiny_synth")
    return synthesize(
        root, SynthSpec(train_videos=12, val_videos=8, classes=2, duration=1.0, fps=8, size=32), workers=1
    )


@pytest.fixture
def plugin_root(tmp_path):
    """A folder for a plugin distribution (tests/plugin_dist.py); modules imported from it are forgotten afterwards."""
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").is_relative_to(tmp_path):
            sys.modules.pop(name, None)


@pytest.fixture
def postgres_url():
    """A clean database on the PostgreSQL server of .ci/run (RHO_TEST_POSTGRES_URL); skips without one."""
    url = os.environ.get("RHO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RHO_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:  # a clean database for this test
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    engine.dispose()
    return url
