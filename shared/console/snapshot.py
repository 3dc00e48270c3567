"""One status snapshot of every mailbox, shared by the console's views, the alert loop and the
alert metrics, so that a busy console does not list 10,000 mailboxes per request.

The first ``get`` loads it; afterwards ``get`` answers the snapshot at once and, once it is older
than ``ttl`` seconds, has it reloaded in the background (one reload at a time): a page never
waits for a listing, and what it shows is at most ``ttl`` plus one listing old (``taken_at``
says when it was taken)."""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Generic, Sequence, TypeVar

__all__ = ["Snapshot"]

T = TypeVar("T")
log = logging.getLogger("mailrepl.console")


class Snapshot(Generic[T]):
    def __init__(self, load: Callable[[], Sequence[T]], ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.load, self.ttl, self.clock = load, ttl, clock
        self._value: Sequence[T] | None = None
        self._at = 0.0
        self.taken_at: datetime | None = None
        self._lock = threading.Lock()  # one load at a time
        self._reloading = False

    def get(self) -> Sequence[T]:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._reload_locked()
                return self._value
        if self.clock() - self._at > self.ttl and not self._reloading:
            self._reloading = True
            threading.Thread(target=self._reload_in_background, name="status-snapshot", daemon=True).start()
        return value

    def fresh(self) -> Sequence[T]:
        """A snapshot taken now (waits for a reload under way, then loads)."""
        with self._lock:
            self._reload_locked()
            return self._value

    def _reload_locked(self) -> None:
        started = self.clock()
        taken = datetime.now(timezone.utc)
        self._value = list(self.load())
        self._at, self.taken_at = started, taken

    def _reload_in_background(self) -> None:
        try:
            with self._lock:
                self._reload_locked()
        except Exception:  # noqa: BLE001 - the old snapshot stays; the next get tries again
            log.exception("status snapshot reload failed")
        finally:
            self._reloading = False
