"""One queue of writers per SQLite file within a process: first come, first served.

SQLite lets one transaction write at a time. A connection that finds the write lock taken waits
in SQLite's busy handler, which sleeps and retries (1, 2, 5, … up to 100 ms between tries): the
lock is free most of that time, a writer that has just committed takes it again first, and with
a dozen threads writing (capture and replay workers, the receiver, the standby view) an unlucky
one waits seconds (a lag percentile of tens of seconds, measured). So the gateway's own writers
queue here instead, in arrival order, and each is handed the lock the moment its predecessor
commits or rolls back; SQLite's busy handler stays the fallback for other processes (an admin
command on the same file) and for a writer that waited ``timeout`` seconds here.

``WriterQueue.connection_class()`` gives an ``sqlite3.Connection`` subclass (the DB-API
connection's ``factory``) whose ``commit``, ``rollback`` and ``close`` hand the turn on; the
engine's ``begin`` hook calls ``take_turn`` before ``BEGIN IMMEDIATE``.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque

__all__ = ["FairLock", "WriterQueue", "writer_queue"]


class FairLock:
    """A lock granted in the order it was asked for (a waiter is handed it by the releaser);
    any thread may release it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            ticket = threading.Lock()
            ticket.acquire()
            self._waiters.append(ticket)
        if ticket.acquire(timeout=timeout):
            return True
        with self._mutex:
            if ticket in self._waiters:  # gave up before our turn came
                self._waiters.remove(ticket)
                return False
        return True  # handed the lock just as the wait ran out

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of a FairLock that is not held")
            if self._waiters:
                self._waiters.popleft().release()  # the lock passes on, still held
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class WriterQueue:
    """The queue of one SQLite file's writers in this process."""

    def __init__(self, timeout: float) -> None:
        self.lock = FairLock()
        self.timeout = timeout

    def connection_class(self) -> type[sqlite3.Connection]:
        queue = self

        class QueuedConnection(sqlite3.Connection):
            _turn = False

            def take_turn(self) -> None:
                if not self._turn:
                    self._turn = queue.lock.acquire(queue.timeout)

            def pass_turn(self) -> None:
                if self._turn:
                    self._turn = False
                    queue.lock.release()

            def commit(self) -> None:
                try:
                    super().commit()
                finally:
                    self.pass_turn()

            def rollback(self) -> None:
                try:
                    super().rollback()
                finally:
                    self.pass_turn()

            def close(self) -> None:
                try:
                    super().close()
                finally:
                    self.pass_turn()

        return QueuedConnection


_QUEUES: dict[str, WriterQueue] = {}
_QUEUES_LOCK = threading.Lock()


def writer_queue(path: str, timeout: float) -> WriterQueue:
    """The process's queue for the SQLite file at ``path`` (one per file, whatever engine opens it)."""
    key = os.path.realpath(path) if path and path != ":memory:" else f":memory:{id(object())}"
    with _QUEUES_LOCK:
        queue = _QUEUES.get(key)
        if queue is None:
            queue = _QUEUES[key] = WriterQueue(timeout)
        return queue
