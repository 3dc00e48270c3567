"""How a test reacts when an external dependency (Dovecot, PostgreSQL) is missing.

On a developer machine a missing server is a reason to skip; in CI it is a broken runner and
must fail, otherwise a green build could have run none of the end-to-end tests.
"""
from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "unavailable"]


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set (to anything but an explicit no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the current test outside CI, fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (required when CI is set)", pytrace=False)
    pytest.skip(reason)
