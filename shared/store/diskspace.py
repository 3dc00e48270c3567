"""Disk space at the storage boundary: telling a full disk from other failures, and free space.

A write that fails for lack of space surfaces differently per layer: ``OSError`` with
``ENOSPC``/``EDQUOT`` (files), SQLite's ``SQLITE_FULL`` ("database or disk is full"),
PostgreSQL's SQLSTATE 53100 (``disk_full``). ``is_disk_full`` recognises each of them anywhere
in an exception's chain, so the store and the blob store can raise ``DiskFull`` (retryable)
instead of a generic error.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["is_disk_full", "free_bytes", "sqlite_dir"]

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def is_disk_full(exc: BaseException | None) -> bool:
    """True if ``exc`` (or an exception it wraps) says there is no space left to write."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        if getattr(exc, "sqlstate", None) == _PG_DISK_FULL:
            return True
        text = str(exc).lower()
        if "database or disk is full" in text or "no space left on device" in text:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``; None if
    it cannot be asked (no such path)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def sqlite_dir(state_url: str) -> Path | None:
    """The directory of a SQLite state file (what fills up), None for another database."""
    if not state_url.startswith("sqlite"):
        return None
    path = (state_url.split("///", 1)[1] if "///" in state_url else "").partition("?")[0]
    if not path or path == ":memory:":
        return None
    return Path(path).absolute().parent
