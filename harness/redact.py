"""Hide the passwords of store URLs in text that is printed, logged or stored.

Its own module so that anything may use it (retries, storage, tracking, the CLI) without importing MLflow code.
"""

from __future__ import annotations

import re

URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^/\s:@]+):[^@\s/]+@")


def redact(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` URL in ``text``."""
    return URL_PASSWORD.sub(r"\1:***@", text)
