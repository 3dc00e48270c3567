"""Headless Chromium for the console's browser tests (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium). Screenshots go to ``MAILREPL_SCREENSHOTS`` (default ``build/screenshots`` in
the repository)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

__all__ = ["browser_missing_reason", "make_driver", "sign_in", "screenshot_dir", "wait_for", "SCREEN"]

REPO = Path(__file__).resolve().parents[2]
SCREEN = (1366, 900)  # a laptop screen


def _find(*names: str) -> str | None:
    for n in names:
        found = shutil.which(n) or next((p for p in (f"/usr/bin/{n}", f"/usr/lib/chromium/{n}") if os.access(p, os.X_OK)), None)
        if found:
            return found
    return None


def browser_missing_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra)"
    if _find("chromium", "chromium-browser") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    if _find("chromedriver") is None:
        return "Debian's chromium-driver is not installed (apt-get install chromium-driver)"
    return None


def make_driver(width: int = SCREEN[0], height: int = SCREEN[1]):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _find("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--lang=en-GB", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_find("chromedriver")), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(pred, timeout: float = 30.0, what: str = "", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:  # noqa: BLE001 - the page may be between two renders
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def sign_in(driver, base_url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(base_url + "/ui/login")
    box = driver.find_element(By.ID, "token")
    box.clear()
    box.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(lambda: driver.current_url.rstrip("/").endswith("/ui") or "/ui/#" in driver.current_url
             or driver.current_url.endswith("/ui/"), 60, "the console after sign-in")


def screenshot_dir() -> Path:
    d = Path(os.environ.get("MAILREPL_SCREENSHOTS") or REPO / "build" / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d
