"""Applied-progress tokens: a progress query waits for the next replay pass instead of polling.

The source gateway learns how far the recovery gateway has applied from its progress answers
(a batch's acknowledgement says what was stored, not what was replayed). Polled once a second,
that left the source's status — and the end of a seed — up to a second behind the standby. Here
each replay pass that applied something bumps a counter; a progress answer carries the current
token (``<epoch>.<counter>``), and a query that names the token it last saw waits, up to a bound,
until it changes, and is then answered with only the replicas applied since (a source of 10,000
mailboxes does not get all of them back for every pass). A token of another epoch (the recovery
gateway restarted) or none gets the full answer at once.

A waiting query is woken by the pass's commit itself (``wait``), not by looking at the token
now and then: the source hears of the last group of a seed a round trip after it commits.

Memory: one integer per replica that was ever applied in this process, and one future per
query waiting now (the API bounds how many wait).
"""
from __future__ import annotations

import asyncio
import re
import secrets
import threading
from dataclasses import dataclass

__all__ = ["MAX_WAIT", "ProgressSignal", "Since"]

MAX_WAIT = 10.0  # seconds a progress query may wait (the query's ``wait`` is checked against it)
_TOKEN = re.compile(r"^([0-9a-f]{8})\.([0-9]{1,18})$")


@dataclass(frozen=True)
class Since:
    """What a query's token means here: ``None`` replicas -> everything; else only those applied
    after generation ``after``."""

    after: int | None

    @property
    def full(self) -> bool:
        return self.after is None


class ProgressSignal:
    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self._generation = 0
        self._applied_at: dict[int, int] = {}  # replica id -> generation of its last applied pass
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []  # queries waiting now

    @property
    def token(self) -> str:
        return f"{self.epoch}.{self._generation}"

    def applied(self, replica_id: int) -> None:
        """A replay pass of ``replica_id`` applied changes (or cleared its error): committed."""
        with self._lock:
            self._generation += 1
            self._applied_at[replica_id] = self._generation
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:  # replay passes run in worker threads; the queries in the event loop
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass

    async def wait(self, since: Since, timeout: float) -> bool:
        """Wait until something is applied after ``since``, at most ``timeout`` seconds; whether it was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:  # looked at under the lock: a pass committing now wakes us or is seen here
                if self.changed(since):
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                entry = (loop, loop.create_future())
                self._waiters.append(entry)
            try:
                await asyncio.wait_for(entry[1], left)
            except asyncio.TimeoutError:
                pass
            finally:
                with self._lock:
                    if entry in self._waiters:
                        self._waiters.remove(entry)

    def since(self, seen: str | None) -> Since:
        """What ``seen`` (a token from an earlier answer, or None) asks for."""
        m = _TOKEN.match(seen or "")
        if m is None or m.group(1) != self.epoch or int(m.group(2)) > self._generation:
            return Since(None)
        return Since(int(m.group(2)))

    def changed(self, since: Since) -> bool:
        """Has anything been applied after ``since``? (A full answer is always due.)"""
        return since.full or self._generation > since.after  # type: ignore[operator]

    def replicas(self, since: Since) -> set[int] | None:
        """The replicas applied after ``since``; None: all of them."""
        if since.full:
            return None
        with self._lock:
            return {rid for rid, gen in self._applied_at.items() if gen > since.after}  # type: ignore[operator]


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():  # a query that timed out (its future cancelled) is not woken
        fut.set_result(None)
