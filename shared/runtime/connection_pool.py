"""A bounded pool of mail-server connections, one per server, shared by everything that opens one.

Capture, replay, the standby view, cutover, verify, failback and the push watchers all reach a
server through ``adapter.open(address)``. ``PooledAdapter`` wraps the adapter so that, together,
they never hold more than ``max_connections`` connections to that server:

- ``open(address)`` hands out an idle connection of that mailbox if one is kept, else opens a
  new one while fewer than the limit exist, else closes the least recently used idle connection
  of another mailbox and opens in its place, else waits (at most ``wait_seconds``) for one to be
  given back. Still none: ``ServerBusy`` (retryable, with a back-off): the caller tries later.
- ``close()`` of a handed-out session gives it back: kept idle for its mailbox's next job (at
  most ``idle_seconds``), unless a call on it raised or its holder called ``discard()`` (it
  saw something that makes the connection's view of the mailbox suspect), which closes it for
  good.
- A connection closed to make room for another mailbox (``evicted``) means the bound is smaller
  than the set of mailboxes with work: each such change then costs a new login, for the gateway
  and the server. The pool counts them and, when that goes on (``CHURN_WARN_PER_MINUTE`` in a
  minute), logs a warning at most every ``CHURN_WARN_EVERY`` seconds naming the bound to raise.
- A server that refuses or drops a new connection while others to it are open is at *its*
  limit, not down: the pool lowers its own limit to what the server took, waits a back-off
  before opening again, and raises the limit one step at a time after each later success. The
  callers see ``ServerBusy``, which slows them down instead of marking mailboxes in error. A
  refusal with no connection open is an outage and is raised as it is (``ServerUnavailable``).

Policy only: the wrapped adapter still speaks the protocol and translates its errors.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailrepl.shared.errors import ServerBusy, ServerUnavailable

__all__ = ["DEFAULT_IDLE_SECONDS", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_WAIT_SECONDS", "PoolStats", "PooledAdapter", "pooled", "push_budget", "push_opener"]

log = logging.getLogger("mailrepl.pool")

# Dovecot's defaults: `service imap { process_limit = 1024 }` (and 1000 clients of its stats
# service); Cyrus serves what its `maxchild` allows. A gateway stays far inside both.
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_IDLE_SECONDS = 120.0  # an idle connection is closed after this (servers log out idle clients after 30 min)
DEFAULT_WAIT_SECONDS = 20.0  # how long ``open`` waits for a connection to be given back
REFUSED_BACK_OFF = 2.0  # first back-off after the server refused a connection; doubles up to the next
REFUSED_BACK_OFF_MAX = 60.0
RAISE_AFTER = 20  # successful opens before a lowered limit grows by one again
CHURN_WARN_PER_MINUTE = 60  # evictions within a minute that make the pool warn (one a second)
CHURN_WARN_EVERY = 600.0  # at most one such warning per pool in this many seconds


@dataclass(frozen=True)
class PoolStats:
    """What ``GET /healthz`` and ``/metrics`` show per server."""

    server: str
    limit: int  # the configured bound
    allowed: int  # the bound in force now (lower after the server refused connections)
    open: int  # connections open now (in use + idle)
    in_use: int
    opened: int  # connections opened since start
    refused: int  # new connections the server refused or dropped while others were open
    waits: int  # opens that had to wait for a connection to be given back
    evicted: int = 0  # idle connections of a mailbox closed to open one for another (a login each)


class _Lease:
    """A session handed out by the pool: every call goes to the real session; ``close`` gives it back."""

    def __init__(self, pool: PooledAdapter, address: str, session: Any, push: bool = False) -> None:
        self._pool, self._address, self._session, self._push = pool, address, session, push
        self._broken = False
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._session, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            try:
                result = value(*args, **kwargs)
            except BaseException:
                self._broken = True  # state unknown (half-read answer, dropped link): never reused
                raise
            if hasattr(result, "__next__"):  # a generator (fetch): a failure while iterating breaks it too
                return self._guard(result)
            return result

        return call

    def _guard(self, it):
        try:
            yield from it
        except BaseException:
            self._broken = True
            raise

    def discard(self) -> None:
        """Not to be reused: closed for good when given back."""
        self._broken = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool._give_back(self._address, self._session, reusable=not self._broken and not self._push,
                              push=self._push)


class PooledAdapter:
    """``adapter`` with at most ``max_connections`` connections open at a time (see the module doc)."""

    def __init__(self, adapter: Any, max_connections: int = DEFAULT_MAX_CONNECTIONS, *,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS, wait_seconds: float = DEFAULT_WAIT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.adapter = adapter
        self.name = adapter.name
        self.limit = max_connections
        self.idle_seconds = idle_seconds
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._idle: OrderedDict[int, tuple[str, Any, float]] = OrderedDict()  # oldest first
        self._opening = 0
        self._in_use = 0
        self._allowed = max_connections
        self._not_before = 0.0
        self._refused_back_off = REFUSED_BACK_OFF
        self._since_lowered = 0
        self._opened = self._refused = self._waits = self._evicted = 0
        self._push_held = 0
        self._churn_since = clock()  # the current minute of evictions: its start and count
        self._churn_count = 0
        self._churn_warned = float("-inf")

    def __getattr__(self, name: str) -> Any:  # list_mailboxes, check, users, ...: the adapter's own
        return getattr(self.adapter, name)

    # ------------------------------------------------------------------ handing out

    def check(self) -> None:
        """The adapter's own probe (one connection, closed again), counted within the bound."""
        self._reserve(None)
        try:
            self.adapter.check()
        finally:
            with self._cond:
                self._opening -= 1
                self._cond.notify()

    def open(self, address: str) -> _Lease:
        session = self._reserve(address)
        if session is not None:
            return _Lease(self, address, session)
        try:
            session = self.adapter.open(address)
        except ServerUnavailable as exc:
            raise self._on_refused(exc) from exc
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._opening -= 1
            self._in_use += 1
            self._opened += 1
            self._succeeded()
        return _Lease(self, address, session)

    def open_push(self, address: str) -> _Lease:
        """A connection to park in NOTIFY/IDLE: never more than half of the connections allowed now
        are held that way (the others capture and replay); ``ServerBusy`` beyond that."""
        with self._cond:
            if self._push_held + 1 > self._allowed // 2:
                raise ServerBusy(f"server {self.name!r}: no connection to spare for push now "
                                 f"({self._push_held} of {self._allowed} held)", back_off=30.0)
            self._push_held += 1
        try:
            lease = self.open(address)
        except BaseException:
            with self._cond:
                self._push_held -= 1
            raise
        lease._push = True
        return lease

    def _reserve(self, address: str | None) -> Any:
        """An idle session of ``address`` (now in use), or None with a slot reserved to open one."""
        deadline = self._clock() + self.wait_seconds
        evicted = None
        with self._cond:
            while True:
                self._expire_idle()
                for key, (addr, session, _) in self._idle.items():
                    if addr == address:
                        del self._idle[key]
                        self._in_use += 1
                        return session
                now = self._clock()
                if now >= self._not_before:
                    if self._count() < self._allowed:
                        break
                    if self._idle:  # room made by closing the least recently used idle connection
                        _, (_, evicted, _) = self._idle.popitem(last=False)
                        self._count_eviction(now)
                        break
                left = deadline - now
                if left <= 0:
                    raise ServerBusy(f"server {self.name!r}: all {self._allowed} connection(s) the gateway may "
                                     f"open to it are in use", back_off=max(1.0, self._not_before - now))
                self._waits += 1
                self._cond.wait(min(left, max(0.05, self._not_before - now)) if now < self._not_before else left)
            self._opening += 1
        if evicted is not None:
            _close_quietly(evicted)
        return None

    def _count_eviction(self, now: float) -> None:
        """One more connection closed for another mailbox; warn when it goes on (lock held)."""
        self._evicted += 1
        if now - self._churn_since >= 60.0:
            self._churn_since, self._churn_count = now, 0
        self._churn_count += 1
        if self._churn_count == CHURN_WARN_PER_MINUTE and now - self._churn_warned >= CHURN_WARN_EVERY:
            self._churn_warned = now
            log.warning("server %r: %d connections of idle mailboxes closed within a minute to open others "
                        "(a new login for nearly every change): max_connections = %d is smaller than the set of "
                        "mailboxes with work; raise it toward their number, within the server's limits",
                        self.name, self._churn_count, self.limit)

    def _on_refused(self, exc: ServerUnavailable) -> Exception:
        """The server did not take a new connection: busy (others are open) or down (none is)."""
        with self._cond:
            self._opening -= 1
            others = self._in_use + len(self._idle)  # established (others being opened may fail too)
            self._cond.notify()
            if others == 0:
                return exc  # nothing open: an outage, raised as it is
            self._refused += 1
            self._allowed = max(1, min(self._allowed, others))
            self._since_lowered = 0
            now = self._clock()
            if now >= self._not_before:  # a new refusal, not another of the same wave: back off longer
                self._not_before = now + self._refused_back_off
                self._refused_back_off = min(REFUSED_BACK_OFF_MAX, self._refused_back_off * 2)
            back_off = self._not_before - now
            log.warning("server %r refused a new connection with %d open (%s): at most %d now, next in %.0f s",
                        self.name, others, exc, self._allowed, back_off)
            return ServerBusy(f"server {self.name!r} takes no more connections now ({exc})", back_off=back_off)

    def _succeeded(self) -> None:
        self._refused_back_off = REFUSED_BACK_OFF
        if self._allowed < self.limit:
            self._since_lowered += 1
            if self._since_lowered >= RAISE_AFTER:
                self._allowed += 1
                self._since_lowered = 0

    def _count(self) -> int:
        return self._in_use + self._opening + len(self._idle)

    def _expire_idle(self) -> None:
        now = self._clock()
        while self._idle:
            key, (_, session, since) = next(iter(self._idle.items()))
            if now - since < self.idle_seconds:
                break
            del self._idle[key]
            _close_quietly(session)  # a logout: quick, and rare

    # ------------------------------------------------------------------ giving back

    def _give_back(self, address: str, session: Any, *, reusable: bool, push: bool = False) -> None:
        with self._cond:
            self._in_use -= 1
            if push:
                self._push_held -= 1
            over = self._count() >= self._allowed  # the limit was lowered meanwhile
            if reusable and not over:
                self._idle[id(session)] = (address, session, self._clock())
                session = None
            self._cond.notify()
        if session is not None:
            _close_quietly(session)

    def prune(self) -> int:
        """Close the idle connections older than ``idle_seconds``; returns how many remain open."""
        with self._cond:
            self._expire_idle()
            return self._count()

    def close_idle(self) -> None:
        with self._cond:
            sessions = [s for _, s, _ in self._idle.values()]
            self._idle.clear()
            self._cond.notify_all()
        for s in sessions:
            _close_quietly(s)

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(server=self.name, limit=self.limit, allowed=self._allowed, open=self._count(),
                             in_use=self._in_use, opened=self._opened, refused=self._refused, waits=self._waits,
                             evicted=self._evicted)


def _close_quietly(session: Any) -> None:
    try:
        session.close()
    except Exception as exc:  # noqa: BLE001 - a connection being dropped; nothing to keep
        log.debug("closing a pooled connection: %s", exc)


def pooled(server: Any, adapter: Any) -> Any:
    """``adapter`` behind a pool of ``server.max_connections`` (IMAP servers; an EWS adapter bounds
    its own HTTP connections and is returned as it is)."""
    limit = getattr(server, "max_connections", 0) if getattr(server, "kind", "") == "imap" else 0
    return PooledAdapter(adapter, limit) if limit else adapter


def push_opener(adapter: Any, address: str) -> Callable[[], Any]:
    """What a push watcher opens its parked session with: within the pool's push share if pooled."""
    if isinstance(adapter, PooledAdapter):
        return lambda: adapter.open_push(address)
    return lambda: adapter.open(address)


def push_budget(server: Any) -> int:
    """How many mailboxes of ``server`` may hold a push connection (IMAP NOTIFY/IDLE, EWS streaming)."""
    return getattr(server, "push_connections", DEFAULT_EWS_PUSH)


DEFAULT_EWS_PUSH = 16  # EWS: streaming subscriptions share the adapter's own HTTP connections
