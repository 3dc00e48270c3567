"""What a gateway process sets up before it does anything: a private umask and safe logging.

* ``umask 077``: every file and directory the gateway creates (SQLite state, its -wal/-shm
  files, the blob store, the failback parts) is its owner's alone, whatever the parent's umask.
* Log lines cannot be forged: control characters in a message and its arguments (a newline in
  an address, a CR, a NUL, an escape sequence) are written escaped (``\\n``, ``\\x1b``), so one
  record is always one line (a traceback follows it as the record's exception text).
* The HTTP client's per-request INFO lines (one per site-state poll, every second) are shown at
  DEBUG only.
"""
from __future__ import annotations

import logging
import os
import re

__all__ = ["escape_controls", "SafeFormatter", "LOG_FORMAT", "prepare_process"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PRIVATE_UMASK = 0o077

# C0 controls but TAB, DEL, C1 controls, the Unicode line/paragraph separators, and the format
# characters that reorder or hide text (bidirectional overrides and isolates, zero-width marks)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\x00": "\\0"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\r``, ``\\0``,
    ``\\xNN``, ``\\uNNNN``): one log line or audit entry stays one, and reads as it is stored."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                             else f"\\u{ord(m.group()):04x}"), text)


class SafeFormatter(logging.Formatter):
    """A formatter that escapes control characters in the message (after the arguments are
    merged in), so user data in a log line can never start a line of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def prepare_process(log_level: str, *, insecure_demo: bool = False) -> None:
    """Private umask, root logging at ``log_level`` through :class:`SafeFormatter`, quiet HTTP
    client; a warning when the configuration runs in ``insecure_demo`` mode."""
    os.umask(PRIVATE_UMASK)
    level = getattr(logging, log_level.upper())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    if insecure_demo:
        logging.getLogger("mailrepl").warning(
            "insecure_demo = true: secrets are accepted from a configuration file others can read; "
            "for a loopback demo only")
