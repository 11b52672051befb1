"""Test-wide set-up: every test gets private HOME, TORCH_HOME and MPLCONFIGDIR folders."""

import signal

import pytest

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
