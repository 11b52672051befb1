"""The base of every harness error, carrying the exit status ``rho`` returns for it.

``RhoError`` is a wrong request (status 2); ``EnvironmentFailure`` is the machine, not the request
(status 1). ``rho`` prints either as one line without a traceback.
"""

from __future__ import annotations


class RhoError(Exception):
    """What the user asked for is wrong (a bad config key, a bad manifest row): exit status 2."""

    exit_status: int = 2


class EnvironmentFailure(RhoError):
    """The environment failed (a store unreachable, a disk full or read-only): exit status 1."""

    exit_status = 1
