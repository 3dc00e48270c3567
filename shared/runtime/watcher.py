"""Push wake-ups for capture: one watching session per protected mailbox, up to a limit.

A watcher only shortens latency. It holds its own adapter session parked in
``wait_for_change`` (IMAP NOTIFY or IDLE) and, when the server signals anything, wakes the capture
of that mailbox (``on_change(key)``); the capture cycle then re-reads the real state through
QRESYNC. Missing a signal costs at most two poll intervals (a mailbox a wake-up has just captured
is left out of the next sweep), never a change. Mailboxes beyond ``limit`` (each watcher is one server
connection and one thread) are served by polling alone.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Hashable

from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.errors import MailreplError

__all__ = ["PushWatchers"]

log = logging.getLogger("mailrepl.watch")

WAIT_SECONDS = 25.0


class _Watcher:
    def __init__(self, key: Hashable, open_session: Callable[[], MailboxSession], on_change: Callable[[Hashable], None],
                 retry_max: float) -> None:
        self.key = key
        self.open_session = open_session
        self.on_change = on_change
        self.retry_max = retry_max
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"watch-{key}", daemon=True)

    def _loop(self) -> None:
        delay = 1.0
        while not self.stop_event.is_set():
            session = None
            try:
                session = self.open_session()
                if not (session.features.notify or session.features.idle):
                    return  # nothing to push: polling covers this mailbox
                delay = 1.0
                while not self.stop_event.is_set():
                    if session.wait_for_change(WAIT_SECONDS):
                        self.on_change(self.key)
            except MailreplError as exc:
                log.debug("watcher %s: %s (retry in %.0fs)", self.key, exc, delay)
            except Exception:  # a watcher must never take the gateway down
                log.exception("watcher %s failed", self.key)
            finally:
                if session is not None:
                    session.close()
            self.stop_event.wait(delay)
            delay = min(self.retry_max, delay * 2)


class PushWatchers:
    """Keeps one watcher per key in ``sync(wanted)``; stops the ones no longer wanted."""

    def __init__(self, on_change: Callable[[Hashable], None], *, limit: int = 200, retry_max: float = 60.0) -> None:
        self.on_change = on_change
        self.limit = limit
        self.retry_max = retry_max
        self._watchers: dict[Hashable, _Watcher] = {}
        self._lock = threading.Lock()

    def sync(self, wanted: dict[Hashable, Callable[[], MailboxSession]]) -> None:
        with self._lock:
            for key in list(self._watchers):
                if key not in wanted:
                    self._watchers.pop(key).stop_event.set()
            for key, opener in wanted.items():
                if key in self._watchers or len(self._watchers) >= self.limit:
                    continue
                w = _Watcher(key, opener, self.on_change, self.retry_max)
                self._watchers[key] = w
                w.thread.start()

    def stop(self) -> None:
        with self._lock:
            for w in self._watchers.values():
                w.stop_event.set()
            self._watchers.clear()

    def __len__(self) -> int:
        return len(self._watchers)
