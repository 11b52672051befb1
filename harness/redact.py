"""Store URLs as the harness shows and uses them: passwords hidden in text that is printed, logged
or stored, and PostgreSQL URLs spelled for the installed driver.

Its own module so that anything may use it (retries, storage, tracking, the CLI) without importing MLflow code.
"""

from __future__ import annotations

import re

URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^/\s:@]+):[^@\s/]+@")

# ``postgresql://`` and ``postgres://`` (Heroku, libpq, the docs' `mlflow server` line) name no
# driver: SQLAlchemy 2.1 then picks psycopg 3, which is not installed (psycopg2-binary is).
POSTGRES_WITHOUT_DRIVER = re.compile(r"^(?:postgresql|postgres)://", re.IGNORECASE)
POSTGRES_DRIVER_URL = "postgresql+psycopg2://"


def redact(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` URL in ``text``."""
    return URL_PASSWORD.sub(r"\1:***@", text)


def database_url(url: str) -> str:
    """``url`` with a driverless PostgreSQL scheme (``postgresql://``, ``postgres://``) spelled
    ``postgresql+psycopg2://``, the installed driver; any other URL unchanged."""
    return POSTGRES_WITHOUT_DRIVER.sub(POSTGRES_DRIVER_URL, url, count=1)
