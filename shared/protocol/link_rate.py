"""A rate cap for the gateway link: token buckets, time-of-day windows, a share kept for live changes.

::

    LinkSchedule   the cap in force at a time of day: windows ("08:00"-"18:00" at 20 Mbit/s, …),
                   else the default (0 = no cap); a window may run past midnight
    TokenBucket    bytes per second with a small burst; ``take(n)`` waits until ``n`` bytes may go
    LinkRateCap    what the shipper calls per chunk of a batch it sends: every byte (counted with
                   its share of the headers that carry it, ``FRAMING``) passes the bucket of the
                   whole cap; bulk bytes (a batch that carries a seed) also pass a bucket of the
                   cap minus what is kept for live changes: twice what they sent
                   in the last ``LIVE_HOLD_SECONDS`` (``LIVE_HEADROOM``), at most ``live_share``
                   of the cap. Live changes busy enough to need it keep ``live_share`` while a
                   seed is throttled; a trickle of live changes (a delivery a second) takes only
                   what it uses, so the seed still fills the cap; a seed alone may use all of it

Pure policy with an injectable clock and sleep: unit-tested without a link.
"""
from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "BURST_SECONDS",
    "CHUNK_BYTES",
    "FRAMING",
    "LinkRateCap",
    "LinkSchedule",
    "LinkStats",
    "RateWindow",
    "TokenBucket",
    "parse_clock",
    "schedule_of",
]

# a bucket saves up at most this many seconds of its rate: it covers the pause between batches
# (one in flight: the round trip and the recovery gateway's durable write of up to a second of
# the cap), which would otherwise be lost to the average
BURST_SECONDS = 1.0
# what the link carries per byte of a request body: TCP/IP and Ethernet headers (66 bytes per
# 1,448-byte segment, 4.6 %) and HTTP framing; the cap is on what crosses the link
FRAMING = 1.05
CHUNK_BYTES = 64 * 1024  # a batch is sent in chunks of this size when a cap is in force
BATCH_SECONDS = 1.0  # under a cap, a batch carries at most this many seconds of it
LIVE_HOLD_SECONDS = 5.0  # live traffic this recent counts towards what bulk traffic leaves for it
LIVE_HEADROOM = 2.0  # bulk traffic leaves live traffic this many times its recent rate (up to its share)


def parse_clock(text: str) -> int:
    """``"HH:MM"`` (00:00-24:00) → minutes after midnight; ValueError otherwise."""
    hours, sep, minutes = text.partition(":")
    if not sep or not (hours.isdigit() and minutes.isdigit()) or len(minutes) != 2 or not 1 <= len(hours) <= 2:
        raise ValueError(f'expected a time of day "HH:MM", got {text!r}')
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > 24 * 60:
        raise ValueError(f'expected a time of day between 00:00 and 24:00, got {text!r}')
    return value


@dataclass(frozen=True)
class RateWindow:
    """From ``start`` to ``end`` (minutes after local midnight; ``end`` < ``start``: past midnight)
    the cap is ``rate`` bytes per second (0: no cap)."""

    start: int
    end: int
    rate: float

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("a window must not start where it ends")
        if self.rate < 0:
            raise ValueError(f"a window's rate must not be negative, got {self.rate}")

    def holds(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class LinkSchedule:
    """The cap (bytes per second, 0 = none) by time of day: the first window that holds, else ``default``."""

    default: float = 0.0
    windows: tuple[RateWindow, ...] = ()

    def rate_at(self, when: dt.datetime) -> float:
        minute = when.hour * 60 + when.minute
        for window in self.windows:
            if window.holds(minute):
                return window.rate
        return self.default

    @property
    def capped(self) -> bool:
        return self.default > 0 or any(w.rate > 0 for w in self.windows)


class TokenBucket:
    """``rate`` bytes per second (0: unlimited). ``take(n)`` reserves ``n`` bytes at once and
    sleeps until the bucket has paid for them, so concurrent takers queue in order and the
    average never exceeds ``rate``; at most ``BURST_SECONDS`` of unused rate is saved up."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self.rate = 0.0
        self._tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill(self._clock())
            if rate != self.rate:
                self.rate = float(rate)
                self._tokens = min(self._tokens, self.rate * BURST_SECONDS)

    def _refill(self, now: float) -> None:
        if self.rate > 0:
            self._tokens = min(self.rate * BURST_SECONDS, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, n: int) -> float:
        """Wait until ``n`` more bytes may go; returns the seconds waited."""
        with self._lock:
            if self.rate <= 0:
                return 0.0
            self._refill(self._clock())
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


@dataclass(frozen=True)
class LinkStats:
    """What status and ``/metrics`` show of the cap."""

    rate: float  # bytes per second in force now (0: no cap)
    live_share: float
    bulk_bytes: int  # sent through the cap since start, batches carrying a seed
    live_bytes: int  # … batches of live changes only
    waited_seconds: float  # time senders spent waiting for the cap
    live_reserved: float  # bytes per second bulk traffic leaves for live traffic now


class LinkRateCap:
    """The cap of one source gateway's link to its recovery gateway (see the module doc)."""

    def __init__(self, schedule: LinkSchedule, *, live_share: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], dt.datetime] = dt.datetime.now) -> None:
        if not 0.0 <= live_share < 1.0:
            raise ValueError(f"live_share must be in [0, 1), got {live_share}")
        self.schedule = schedule
        self.live_share = live_share
        self._now = now
        self._all = TokenBucket(0.0, clock=clock, sleep=sleep)
        self._bulk = TokenBucket(0.0, clock=clock, sleep=sleep)
        self._lock = threading.Lock()
        self._bytes = {True: 0, False: 0}
        self._waited = 0.0
        self._checked_minute: tuple[int, int] | None = None
        self._clock = clock
        self._live_sent: deque[tuple[float, int]] = deque()  # (when, bytes) of the last LIVE_HOLD_SECONDS
        self._live_recent = 0
        self._rate = 0.0
        self._update()

    @property
    def enabled(self) -> bool:
        return self.schedule.capped

    def _update(self) -> float:
        """Take the rate the schedule sets now (looked up once a minute)."""
        when = self._now()
        minute = (when.toordinal(), when.hour * 60 + when.minute)
        if minute != self._checked_minute:
            self._checked_minute = minute
            self._rate = self.schedule.rate_at(when)
            self._all.set_rate(self._rate)
        self._bulk.set_rate(self._rate - self._live_reserve())
        return self._rate

    def _live_reserve(self) -> float:
        """Bytes per second bulk traffic leaves for live traffic now (see the module doc)."""
        cutoff = self._clock() - LIVE_HOLD_SECONDS
        while self._live_sent and self._live_sent[0][0] < cutoff:
            self._live_recent -= self._live_sent.popleft()[1]
        recent_rate = self._live_recent / LIVE_HOLD_SECONDS
        return min(self._rate * self.live_share, LIVE_HEADROOM * recent_rate)

    def acquire(self, n: int, *, live: bool) -> float:
        """Wait until ``n`` bytes of a live (or bulk) batch may go; returns the seconds waited."""
        wire = math.ceil(n * FRAMING)
        with self._lock:
            if live:
                self._live_sent.append((self._clock(), wire))
                self._live_recent += wire
            self._update()
        waited = 0.0 if live else self._bulk.take(wire)
        waited += self._all.take(wire)
        with self._lock:
            self._bytes[live] += n
            self._waited += waited
        return waited

    def chunks(self, data: bytes, *, live: bool, size: int = CHUNK_BYTES):
        """``data`` in chunks, each let through the cap before it is yielded (a request body)."""
        view = memoryview(data)
        for i in range(0, len(data), size):
            piece = view[i:i + size]
            self.acquire(len(piece), live=live)
            yield bytes(piece)

    def batch_bytes(self, default: int) -> int:
        """How large a batch may be now: a second of the cap (so a live change never waits
        long behind a throttled seed), at least 128 KiB; ``default`` when nothing is capped."""
        with self._lock:
            rate = self._update()
        return default if rate <= 0 else max(128 * 1024, min(default, int(rate * BATCH_SECONDS)))

    def stats(self) -> LinkStats:
        with self._lock:
            rate = self._update()
            return LinkStats(rate=rate, live_share=self.live_share, bulk_bytes=self._bytes[False],
                             live_bytes=self._bytes[True], waited_seconds=round(self._waited, 3),
                             live_reserved=self._live_reserve())


def schedule_of(default_mbit: float, windows: Sequence[tuple[str, str, float]]) -> LinkSchedule:
    """A schedule from megabits per second and ``(from, to, mbit)`` windows ("HH:MM")."""
    return LinkSchedule(default=default_mbit * 125_000,
                        windows=tuple(RateWindow(parse_clock(a), parse_clock(b), mbit * 125_000)
                                      for a, b, mbit in windows))
