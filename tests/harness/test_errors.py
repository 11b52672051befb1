"""Every harness error carries the exit status ``rho`` returns for it: 1 the machine, 2 the request."""

import pytest

from harness.checkpoint import CheckpointError, CheckpointWriteError
from harness.cli.common import UserError
from harness.config import ConfigError
from harness.data.importers import DatasetLayoutError
from harness.data.manifest import ManifestError
from harness.errors import EnvironmentFailure, RhoError
from harness.preflight import NotWritableError
from harness.report import ReportError
from harness.retry import ServiceUnavailableError
from harness.speed import SpeedError
from harness.study import StudyChangedError
from harness.study.storage import StorageUnavailableError
from harness.tracking import TrackingUnavailableError

ENVIRONMENT = [
    CheckpointWriteError,
    NotWritableError,
    ServiceUnavailableError,
    StorageUnavailableError,
    TrackingUnavailableError,
]
REQUEST = [
    SpeedError,
    CheckpointError,
    ConfigError,
    DatasetLayoutError,
    ManifestError,
    ReportError,
    StudyChangedError,
    UserError,
]


@pytest.mark.parametrize("error", ENVIRONMENT, ids=lambda error: error.__name__)
def test_failures_of_the_machine_exit_1(error):
    assert issubclass(error, EnvironmentFailure) and error.exit_status == 1


@pytest.mark.parametrize("error", REQUEST, ids=lambda error: error.__name__)
def test_wrong_requests_exit_2(error):
    assert issubclass(error, RhoError) and not issubclass(error, EnvironmentFailure)
    assert error.exit_status == 2


def test_errors_keep_the_builtin_bases_callers_catch():
    assert issubclass(ConfigError, ValueError) and issubclass(ManifestError, ValueError)
    assert issubclass(SpeedError, ValueError) and issubclass(CheckpointError, RuntimeError)
    assert all(issubclass(error, RuntimeError) for error in ENVIRONMENT)
