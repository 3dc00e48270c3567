"""Loopback ports and readiness probes for servers started by the tests."""
from __future__ import annotations

import socket
import time

__all__ = ["eventually", "free_port", "wait_for_greeting"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller must cope with a race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_greeting(port: int, prefix: bytes, timeout: float, host: str = "127.0.0.1") -> bool:
    """Poll until a fresh connection to ``port`` is greeted with a line starting with ``prefix``.

    Probing the greeting rather than the open port matters: Dovecot's master listens before its
    login processes are ready, and a connect that succeeds too early says nothing about service.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(2)
                if s.makefile("rb").readline().startswith(prefix):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def eventually(pred, timeout: float = 60.0, what: str = ""):
    """Poll ``pred`` until it answers something true (returned), or fail after ``timeout`` s
    naming ``what`` and the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what} (last: {last!r})")
