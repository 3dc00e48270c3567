"""Batches of one source that arrive side by side are stored in the order they were sent.

A source gateway keeps more than one batch in flight across a long link (the next one travels
while the recovery gateway stores the last), on separate connections. A batch that continues a
mailbox where the one before it ends is a *gap* until that one is stored; answered at once, the
sender would rewind and send both again. So each request of a source takes a ticket as it
arrives (before its body is read), and a batch that finds a gap waits while a request of the
same source that arrived before it is still being received or stored, re-checking after each
one ends, for at most ``max_wait`` seconds. It never waits for a later request (two batches
cannot wait for each other), and a gap that no earlier request fills is answered as before.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["IngestOrder"]

MAX_WAIT = 120.0  # seconds a batch waits for the batches of its source that arrived before it


class IngestOrder:
    def __init__(self, max_wait: float = MAX_WAIT) -> None:
        self.max_wait = max_wait
        self._tickets = itertools.count(1)
        self._arriving: dict[str, set[int]] = {}  # source -> tickets of its requests in progress
        self._cond = threading.Condition()
        self.waited = 0  # batches that waited for an earlier one (and found it stored)

    @contextmanager
    def arriving(self, source: str) -> Iterator[int]:
        """Around a whole request of ``source`` (receiving, decoding, storing): its ticket."""
        with self._cond:
            ticket = next(self._tickets)
            self._arriving.setdefault(source, set()).add(ticket)
        try:
            yield ticket
        finally:
            with self._cond:
                held = self._arriving.get(source)
                if held is not None:
                    held.discard(ticket)
                    if not held:
                        del self._arriving[source]
                self._cond.notify_all()

    def wait_turn(self, source: str, ticket: int, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()`` (the batch continues what is stored) or no earlier request of
        ``source`` is in progress, at most ``max_wait`` seconds; returns ``ready()`` as last seen."""
        deadline = time.monotonic() + self.max_wait
        waited = False
        while True:
            if ready():
                if waited:
                    self.waited += 1
                return True
            with self._cond:
                earlier = any(t < ticket for t in self._arriving.get(source, ()))
                left = deadline - time.monotonic()
                if not earlier or left <= 0:
                    return False
                # woken as a request of any source ends; looked at again at least this often
                self._cond.wait(min(left, 0.5))
                waited = True
