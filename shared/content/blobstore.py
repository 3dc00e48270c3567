"""A content-addressed blob store on the filesystem: message part bodies keyed by XXH3-128.

Layout: ``root/ab/cd/<key>`` (the key is 32 lowercase hex; two levels of fan-out), ``root/tmp/``
(blobs being written, and blobs a sweep is about to delete), ``root/quarantine/`` (blobs whose
bytes no longer match their key, kept for inspection). The store only holds bytes: reference
counts live in the database and reach :meth:`BlobStore.sweep` through ``referenced``.

* A blob appears under its final name only complete: written to ``tmp/``, fsynced, renamed into
  place, directory fsynced (``fsync=False`` skips both fsyncs). A crash leaves at most a stray
  file in ``tmp/``, which a later sweep removes.
* ``put``/``put_many`` are idempotent and safe to run at once for the same keys from several
  threads and processes: the atomic rename is the only synchronisation, and every writer of a
  key writes the same bytes (in such a race more than one writer may count the blob as new).
* With a ``sealer`` holding a key, files hold the part sealed with AES-256-GCM
  (``mailrepl.shared.store.sealing``); keys remain the plaintext's hash, so deduplication and
  the hash check after decryption work as without. Directories are 0700, files 0600.
* Reads verify the hash. A mismatch raises :class:`BlobCorrupt` and moves the file to
  ``quarantine/``, so the next ``put`` of that key stores a good copy.
* A sweep never deletes a blob whose mtime is within its grace period. A ``put`` that finds the
  blob present, and ``missing()`` reporting it present, count as a write: they refresh the mtime
  of a blob older than :data:`REFRESH_AFTER`, so a batch reusing an orphaned blob has the grace
  period to commit its references; a sweep that loses that race sees the mtime change between
  its look and its delete and puts the blob back. This needs ``grace_seconds >= REFRESH_AFTER``.
  ``has()`` refreshes nothing: use ``missing()`` to ask a peer what to send.
* Fan-out directories are never removed, so a writer never sees its directory vanish. Deletes
  are not fsynced: a blob that comes back after a crash is swept again.

Filesystem errors are :class:`~mailrepl.shared.errors.StoreError` (retryable); an absent blob is
:class:`BlobMissing`, a damaged one :class:`BlobCorrupt` (neither retryable: fetch the body from
the source again). A malformed key, or data not hashing to its key, is a ``ValueError``.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mailrepl.shared.errors import DiskFull, StoreError
from mailrepl.shared.store.diskspace import is_disk_full
from mailrepl.shared.store.sealing import PLAIN, Sealer, SealError, UnknownKey
from mailrepl.shared.content.mime_split import blob_key  # the key of a part: XXH3-128 of its exact bytes

__all__ = [
    "DEFAULT_GRACE_SECONDS", "REFRESH_AFTER", "BlobCorrupt", "BlobMissing", "BlobStats", "BlobStore",
    "SweepReport", "blob_key", "check_key",
]

DEFAULT_GRACE_SECONDS = 600.0  # a sweep keeps blobs written (or claimed) less than this long ago
REFRESH_AFTER = 60.0  # seconds: a re-put or missing() of an older blob refreshes its mtime

T = TypeVar("T")
R = TypeVar("R")

_KEY = re.compile(r"[0-9a-f]{32}")
_FANOUT = re.compile(r"[0-9a-f]{2}")
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


class BlobCorrupt(StoreError):
    """The stored bytes no longer hash to their key; the file was quarantined. Fetch it again."""
    retryable = False


class BlobMissing(StoreError):
    """No blob is stored under that key."""
    retryable = False


def check_key(key: str) -> str:
    """``key`` itself if it is exactly 32 lowercase hex characters, else ``ValueError``."""
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(f"not a blob key (32 lowercase hex characters): {key!r:.60}")
    return key


@dataclass
class BlobStats:
    """Counters since the store object was made (this process only)."""
    puts: int = 0  # blobs newly written
    dedup_hits: int = 0  # blobs offered to put/put_many that were already stored (or offered twice)
    bytes_written: int = 0  # bytes of the newly written blobs


@dataclass(frozen=True)
class SweepReport:
    scanned: int = 0  # blobs looked at
    deleted: int = 0  # unreferenced blobs older than the grace period, deleted
    bytes_freed: int = 0  # their sizes
    kept_recent: int = 0  # blobs within the grace period, kept without asking ``referenced``
    tmp_removed: int = 0  # stale files removed from tmp/ (crashed writes, interrupted sweeps)


class BlobStore:
    """Blobs under ``root``, which is created if need be. See the module docstring for the contract."""

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True, sealer: Sealer = PLAIN) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.sealer = sealer  # files hold sealed bytes when a key is configured; keys stay plaintext hashes
        self.stats = BlobStats()
        self._tmp_dir = self.root / "tmp"
        self._quarantine_dir = self.root / "quarantine"
        self._stats_lock = threading.Lock()  # guards the counters only; blob I/O takes no lock
        self._fanout_known: set[Path] = set()  # fan-out directories seen to exist
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # parts are mail: owner only
            if self.root.stat().st_mode & 0o077:
                self.root.chmod(0o700)
            self._tmp_dir.mkdir(mode=0o700, exist_ok=True)
            self._quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the blob store {self.root}: {exc}") from exc

    def path(self, key: str) -> Path:
        """Where the blob ``key`` lives (``ValueError`` for a malformed key)."""
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key``; False if it was already there (then nothing is written)."""
        return self.put_many([(key, data)]) == 1

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Store every ``(key, data)``; return how many were new.

        All items are checked first (``ValueError``: nothing is written). New blobs are written to
        ``tmp/``, each fsynced, renamed into place, and then each directory involved fsynced once.
        """
        batch = [(check_key(key), data) for key, data in items]
        if wrong := [key for key, data in batch if blob_key(data) != key]:
            raise ValueError(f"data does not hash to its key {wrong[0]} ({len(wrong)} such items)")
        todo: dict[str, bytes] = {}
        dirs: set[Path] = set()  # directories to fsync at the end
        pending: dict[str, str] = {}  # key -> tmp file, until renamed into place
        hits = 0
        try:
            for key, data in batch:
                if key in todo:
                    hits += 1
                    continue
                path = self.path(key)
                age = self._claim(path)
                if age is None:
                    todo[key] = data
                    continue
                hits += 1
                if age < REFRESH_AFTER:  # maybe another writer's, not yet fsynced: help make it durable
                    dirs.add(path.parent)
            # written and fsynced side by side: the filesystem folds concurrent fsyncs into a
            # few journal commits, where one after the other each waits for its own
            for key, tmp in zip(todo, _each(self._write_tmp, todo.items(), undo=_unlink_quietly)):
                pending[key] = tmp
            for key in todo:
                path = self.path(key)
                if path.parent not in self._fanout_known:  # fan-out directories are never removed
                    dirs.update(_make_dirs(path.parent))
                    self._fanout_known.add(path.parent)
                try:
                    os.replace(pending[key], path)
                except FileNotFoundError:  # removed behind our back after all: make it again
                    dirs.update(_make_dirs(path.parent))
                    os.replace(pending[key], path)
                del pending[key]
                dirs.add(path.parent)
            if self.fsync:  # every directory that gained an entry; all done before we return
                _each(lambda d: _fsync(d, _DIR_FLAGS), sorted(dirs))
        except OSError as exc:
            if is_disk_full(exc):  # every temporary file of this call is removed below
                raise DiskFull(f"cannot store blobs in {self.root}: disk full: {exc}") from exc
            raise StoreError(f"cannot store blobs in {self.root}: {exc}") from exc
        finally:
            for tmp in pending.values():
                _unlink_quietly(tmp)
        with self._stats_lock:
            self.stats.puts += len(todo)
            self.stats.dedup_hits += hits
            self.stats.bytes_written += sum(len(data) for data in todo.values())
        return len(todo)

    def _claim(self, path: Path) -> float | None:
        """Seconds since the blob at ``path`` was written, None if absent; refreshes an old mtime."""
        try:
            age = time.time() - os.stat(path).st_mtime
            if age > REFRESH_AFTER:
                os.utime(path)  # a sweep in progress notices this and keeps the blob
        except FileNotFoundError:
            return None  # also when a sweep took it between our stat and utime: write it again
        return age

    def _write_tmp(self, item: tuple[str, bytes]) -> str:
        key, data = item
        fd, tmp = tempfile.mkstemp(prefix=f"{key}.", suffix=".tmp", dir=self._tmp_dir)  # mode 0600
        try:
            with open(fd, "wb") as f:  # closes fd
                f.write(self.sealer.seal(data, key))
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def get(self, key: str) -> bytes:
        """The bytes of ``key``, verified: ``BlobMissing`` if absent, ``BlobCorrupt`` if damaged."""
        path = self.path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                stored = f.readall()
                try:
                    data = self.sealer.open(stored, key)
                except UnknownKey:
                    raise  # a configuration problem, not damage: keep the file
                except SealError:
                    data = stored  # damaged: quarantined below
                if blob_key(data) == key:
                    return data
                self._quarantine(key, path, os.fstat(f.fileno()))
        except FileNotFoundError:
            raise BlobMissing(f"no blob {key} in {self.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot read blob {key} in {self.root}: {exc}") from exc
        raise BlobCorrupt(f"blob {key} ({len(data)} bytes) does not match its key; quarantined")

    def _quarantine(self, key: str, path: Path, seen: os.stat_result) -> None:
        """Move the damaged file we read (``seen``) out of the way, unless it is gone already."""
        dest = self._quarantine_dir / f"{key}.{uuid.uuid4().hex[:12]}"
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return  # another reader quarantined it first, or it was deleted
        moved = os.stat(dest)
        if (moved.st_dev, moved.st_ino) != (seen.st_dev, seen.st_ino):
            os.replace(dest, path)  # a good copy put since our read: we took that one, put it back

    def has(self, key: str) -> bool:
        """Whether a file is stored under ``key`` (not verified, mtime untouched)."""
        return os.path.isfile(self.path(key))

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys not stored, in input order, each once. Present ones are claimed (see module doc)."""
        absent = []
        for key in dict.fromkeys(check_key(k) for k in keys):
            try:
                if self._claim(self.path(key)) is None:
                    absent.append(key)
            except OSError as exc:
                raise StoreError(f"cannot look up blob {key} in {self.root}: {exc}") from exc
        return absent

    def size(self, key: str) -> int:
        """The stored size of ``key`` in bytes (not verified)."""
        try:
            return os.stat(self.path(key)).st_size
        except FileNotFoundError:
            raise BlobMissing(f"no blob {key} in {self.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot stat blob {key} in {self.root}: {exc}") from exc

    def keys(self) -> Iterator[str]:
        """Every stored key, walking the fan-out directories in sorted order."""
        for top in filter(_FANOUT.fullmatch, _listdir(self.root)):
            for mid in filter(_FANOUT.fullmatch, _listdir(self.root / top)):
                for name in _listdir(self.root / top / mid):
                    if _KEY.fullmatch(name) and name.startswith(top + mid):
                        yield name

    def verify_all(self) -> list[str]:
        """Re-hash every blob; return the keys found corrupt (now quarantined)."""
        corrupt = []
        for key in self.keys():
            try:
                self.get(key)
            except BlobCorrupt:
                corrupt.append(key)
            except BlobMissing:
                pass  # deleted while we walked
        return corrupt

    def delete(self, key: str) -> bool:
        """Remove ``key``; False if it was not there."""
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete blob {key} in {self.root}: {exc}") from exc
        return True

    def sweep(self, referenced: Callable[[str], bool] | Container[str], *,
              grace_seconds: float = DEFAULT_GRACE_SECONDS, now: float | None = None) -> SweepReport:
        """Delete the blobs that are not ``referenced`` and older than ``grace_seconds``.

        ``referenced`` is a predicate or a container of keys; it is asked only about blobs older
        than the grace period. Stale files in ``tmp/`` older than the grace period go too.
        """
        is_referenced = referenced if callable(referenced) else referenced.__contains__
        cutoff = (time.time() if now is None else now) - grace_seconds
        scanned = deleted = freed = recent = tmp_removed = 0
        try:
            for key in self.keys():
                path = self.path(key)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                scanned += 1
                if st.st_mtime >= cutoff:
                    recent += 1
                elif not is_referenced(key) and self._retire(key, path, st):
                    deleted += 1
                    freed += st.st_size
            for name in _listdir(self._tmp_dir):
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(self._tmp_dir / name).st_mtime < cutoff:
                        os.unlink(self._tmp_dir / name)
                        tmp_removed += 1
        except OSError as exc:
            raise StoreError(f"cannot sweep the blob store {self.root}: {exc}") from exc
        return SweepReport(scanned, deleted, freed, recent, tmp_removed)

    def _retire(self, key: str, path: Path, seen: os.stat_result) -> bool:
        """Delete the blob we looked at (``seen``) unless it was claimed since; True if deleted."""
        trash = self._tmp_dir / f"{key}.{uuid.uuid4().hex[:12]}.swept"
        try:
            os.replace(path, trash)  # from here on a put no longer finds it and writes it anew
        except FileNotFoundError:
            return False
        moved = os.stat(trash)
        if (moved.st_ino, moved.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
            os.replace(trash, path)  # refreshed by a put or missing() after we looked: keep it
            return False
        os.unlink(trash)
        return True


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _make_dirs(leaf: Path) -> list[Path]:
    """Create ``leaf`` and its parent as needed; return the directories that gained an entry."""
    changed = []
    for directory in (leaf.parent, leaf):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        changed.append(directory.parent)
    return changed


_IO_THREADS = 16
_io_pool: ThreadPoolExecutor | None = None
_io_pool_lock = threading.Lock()


def _each(fn: Callable[[T], R], items: Iterable[T], undo: Callable[[R], object] | None = None) -> list[R]:
    """``fn`` over ``items`` side by side on a shared I/O pool; the results in order.

    Returns once every call has ended. If one raised, ``undo`` is called on the results of the
    others and the first error is raised.
    """
    items = list(items)
    if len(items) < 2:
        return [fn(item) for item in items]  # an error leaves nothing of ours to undo
    global _io_pool
    with _io_pool_lock:
        if _io_pool is None:
            _io_pool = ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="blob-io")
    futures = [_io_pool.submit(fn, item) for item in items]
    wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        if undo is not None:
            for f in futures:
                if f.exception() is None:
                    undo(f.result())
        raise errors[0]
    return [f.result() for f in futures]


def _forget_pool_in_child() -> None:
    global _io_pool, _io_pool_lock
    _io_pool, _io_pool_lock = None, threading.Lock()  # a forked child has none of the threads


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
