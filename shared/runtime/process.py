"""What a gateway process sets up before it does anything: a private umask and safe logging.

* ``umask 077``: every file and directory the gateway creates (SQLite state, its -wal/-shm
  files, the blob store, the failback parts) is its owner's alone, whatever the parent's umask.
* Log lines cannot be forged: control characters in a message and its arguments (a newline in
  an address, a CR, a NUL, an escape sequence) are written escaped (``\\n``, ``\\x1b``), so one
  record is always one line (a traceback follows it as the record's exception text).
* The HTTP client's per-request INFO lines (one per site-state poll, every second) are shown at
  DEBUG only.
* Memory goes back to the system when a batch is done (glibc): message bodies and batches are
  large, short-lived buffers, and by default glibc raises its mmap threshold after freeing one,
  keeping later ones on heaps it does not return, one heap set per thread; a fixed threshold
  and two arenas keep the peak close to what is alive (measured while seeding: -20 to -30 MB
  per gateway at the same CPU within noise).
* The cyclic garbage collector leaves the start-up heap alone and runs less often
  (:func:`settle_heap`): the modules, routes and mappings loaded at start-up (a few hundred
  thousand objects) live as long as the process, and a gateway allocates container objects for
  every change and message it handles. With the default thresholds the collector ran thousands
  of times a minute while seeding and walked that whole start-up heap on each full collection.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import re

__all__ = ["escape_controls", "SafeFormatter", "LOG_FORMAT", "prepare_process", "settle_heap"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD = 1 << 20  # buffers from 1 MiB on are mapped, and unmapped when freed
ARENA_MAX = 2
PRIVATE_UMASK = 0o077
GC_THRESHOLDS = (20_000, 20, 10)  # Python's defaults: (700, 10, 10)

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
    _return_freed_memory()
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


def _return_freed_memory() -> None:
    """Fixed mmap threshold and at most two malloc arenas (glibc only; elsewhere nothing)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_ARENA_MAX, ARENA_MAX)


def settle_heap() -> None:
    """Once the gateway is built, before it serves: what start-up allocated is collected once and
    then left out of every later collection (``gc.freeze``), and young objects are collected
    after :data:`GC_THRESHOLDS` allocations instead of 700. Reference counting still frees
    everything that is not in a cycle at once; cycles wait a little longer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
