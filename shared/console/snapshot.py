"""One status snapshot of every mailbox, shared by the console's views, the alert loop and the
alert metrics for ``ttl`` seconds, so that a busy console does not list 10,000 mailboxes per
request."""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Sequence, TypeVar

__all__ = ["Snapshot"]

T = TypeVar("T")


class Snapshot(Generic[T]):
    def __init__(self, load: Callable[[], Sequence[T]], ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.load, self.ttl, self.clock = load, ttl, clock
        self._value: Sequence[T] | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def get(self) -> Sequence[T]:
        with self._lock:  # one load at a time; the others wait for it and share it
            if self._value is None or self.clock() - self._at > self.ttl:
                self._value = list(self.load())
                self._at = self.clock()
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
