"""Browser tests of the console: one pair of gateways over real Dovecot servers per module, one
headless Chromium per module. A missing Chromium, chromedriver or selenium skips on a
workstation and fails in CI."""
from __future__ import annotations

import pytest

from tests.support.browser import browser_missing_reason, make_driver
from tests.support.environment import unavailable


@pytest.fixture(scope="module")
def driver():
    reason = browser_missing_reason()
    if reason:
        unavailable(reason)
    d = make_driver()
    try:
        yield d
    finally:
        d.quit()
