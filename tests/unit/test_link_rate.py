"""The link's rate cap: token bucket, time-of-day windows, the share kept for live changes."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from mailrepl.shared.protocol.link_rate import (
    BURST_SECONDS,
    FRAMING,
    LinkRateCap,
    LinkSchedule,
    RateWindow,
    TokenBucket,
    parse_clock,
    schedule_of,
)


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


def send(bucket_take, total: int, chunk: int) -> None:
    for _ in range(total // chunk):
        bucket_take(chunk)


@pytest.mark.parametrize("rate,chunk", [(2_500_000, 64 * 1024), (125_000, 1500), (10_000_000, 1 << 20)])
def test_bucket_holds_its_rate(rate, chunk):
    t = FakeTime()
    bucket = TokenBucket(rate, clock=t.clock, sleep=t.sleep)
    total = chunk * 400
    start = t.t
    send(bucket.take, total, chunk)
    elapsed = t.t - start
    # at most the burst may go before the clock starts counting
    assert total / elapsed <= rate * 1.001
    assert elapsed >= total / rate - BURST_SECONDS
    assert elapsed <= total / rate + 1e-6


def test_bucket_without_rate_never_waits():
    t = FakeTime()
    bucket = TokenBucket(0, clock=t.clock, sleep=t.sleep)
    send(bucket.take, 100 << 20, 1 << 20)
    assert t.t == 1000.0


def test_bucket_saves_up_only_a_short_burst():
    t = FakeTime()
    bucket = TokenBucket(1_000_000, clock=t.clock, sleep=t.sleep)
    t.t += 3600  # an hour idle
    assert bucket.take(int(1_000_000 * BURST_SECONDS)) == 0.0  # the burst goes at once
    assert bucket.take(1_000_000) == pytest.approx(1.0)  # then the rate again


def test_rate_change_takes_effect():
    t = FakeTime()
    bucket = TokenBucket(1_000_000, clock=t.clock, sleep=t.sleep)
    send(bucket.take, 1_000_000, 10_000)
    bucket.set_rate(100_000)
    start = t.t
    send(bucket.take, 1_000_000, 10_000)
    assert t.t - start == pytest.approx(10.0, abs=0.2)


def test_clock_parsing():
    assert parse_clock("00:00") == 0
    assert parse_clock("8:30") == 510
    assert parse_clock("24:00") == 1440
    for bad in ("24:01", "8", "08:60", "ab:cd", "08:5", "-1:00", "123:00"):
        with pytest.raises(ValueError):
            parse_clock(bad)


def test_windows_by_time_of_day_and_past_midnight():
    sched = schedule_of(20, [("08:00", "18:00", 20), ("22:00", "06:00", 0), ("18:00", "22:00", 50)])
    at = lambda h, m=0: sched.rate_at(dt.datetime(2026, 12, 6, h, m))
    assert at(7, 59) == 20 * 125_000  # default
    assert at(8) == 20 * 125_000 and at(17, 59) == 20 * 125_000
    assert at(18) == 50 * 125_000 and at(21, 59) == 50 * 125_000
    assert at(22) == 0 and at(23, 30) == 0 and at(0) == 0 and at(5, 59) == 0  # off-peak: full speed
    assert at(6) == 20 * 125_000
    assert schedule_of(0, [("00:00", "24:00", 10)]).rate_at(dt.datetime(2026, 1, 1, 23, 59)) == 10 * 125_000
    assert not LinkSchedule().capped and sched.capped
    with pytest.raises(ValueError):
        RateWindow(60, 60, 1.0)


def test_cap_follows_the_window_it_is_in():
    t = FakeTime()
    now = [dt.datetime(2026, 12, 6, 17, 59)]
    cap = LinkRateCap(schedule_of(0, [("08:00", "18:00", 8)]), live_share=0.0,
                      clock=t.clock, sleep=t.sleep, now=lambda: now[0])
    assert cap.stats().rate == 1_000_000
    start = t.t
    for _ in range(100):
        cap.acquire(10_000, live=False)
    assert t.t - start == pytest.approx(1.0, abs=BURST_SECONDS + 0.01)
    now[0] = dt.datetime(2026, 12, 6, 18, 0)  # off-peak: no cap
    start = t.t
    for _ in range(1000):
        cap.acquire(100_000, live=False)
    assert t.t == start
    assert cap.stats().rate == 0 and cap.stats().bulk_bytes == 100 * 10_000 + 1000 * 100_000


def test_bulk_leaves_the_live_share_and_each_alone_may_use_all():
    """A seed alone and live changes alone each get the whole cap; while live changes were sent
    in the last seconds, a seed gets (1 - share) of it; never more than the cap in all."""
    t = FakeTime()
    cap = LinkRateCap(schedule_of(8, []), live_share=0.25, clock=t.clock, sleep=t.sleep,
                      now=lambda: dt.datetime(2026, 12, 6, 12))
    start = t.t
    for _ in range(1000):
        cap.acquire(10_000, live=False)  # 10 MB of seed alone at the full 1 MB/s (with its framing)
    assert t.t - start == pytest.approx(10.0 * FRAMING, abs=0.15)
    start = t.t
    for _ in range(1000):
        cap.acquire(10_000, live=True)  # 10 MB of live changes at the full 1 MB/s
    assert t.t - start == pytest.approx(10.0 * FRAMING, abs=0.15)
    cap.acquire(1, live=True)
    start = t.t
    for _ in range(300):
        cap.acquire(10_000, live=False)  # 3 MB of seed right after live traffic: 0.75 MB/s
    assert t.t - start == pytest.approx(4.0 * FRAMING, abs=BURST_SECONDS + 0.05)
    stats = cap.stats()
    assert (stats.bulk_bytes, stats.live_bytes) == (13_000_000, 10_000_001)


def test_a_trickle_of_live_changes_leaves_the_seed_the_cap():
    """Live changes that use little (one small batch a second) are left what they use, twice over,
    not the whole live share: the seed keeps filling the cap, and the link as a whole stays under it."""
    t = FakeTime()
    cap = LinkRateCap(schedule_of(8, []), live_share=0.25, clock=t.clock, sleep=t.sleep,
                      now=lambda: dt.datetime(2026, 12, 6, 12))
    start = t.t
    for _ in range(20):
        cap.acquire(2_000, live=True)  # a delivery a second: 2 kB
        for _ in range(100):
            cap.acquire(10_000, live=False)  # 1 MB of seed per round
    elapsed = t.t - start
    total = 20 * (2_000 + 1_000_000)
    on_link = total * FRAMING  # the cap counts the headers that carry the bytes
    assert on_link / elapsed <= 1_000_000 * 1.001 + 1_000_000 * BURST_SECONDS / elapsed  # never over the cap
    assert on_link / elapsed >= 1_000_000 * 0.99  # the seed was not held to 1 - live_share of it
    # live changes busy enough to use their share get it reserved again: a seed right after
    # 0.6 MB/s of live traffic gets 0.75 of the cap
    for _ in range(300):
        cap.acquire(20_000, live=True)
    start = t.t
    for _ in range(300):
        cap.acquire(10_000, live=False)
    assert t.t - start == pytest.approx(4.0 * FRAMING, abs=BURST_SECONDS + 0.05)


def test_live_keeps_its_share_under_a_concurrent_seed():
    """Real threads and clock: a seed sending flat out and a live sender both through one cap."""
    cap = LinkRateCap(schedule_of(8, []), live_share=0.3)  # 1 MB/s, 0.3 MB/s kept for live
    stop = threading.Event()
    sent = {"bulk": 0}

    def seed():
        while not stop.is_set():
            cap.acquire(16_384, live=False)
            sent["bulk"] += 16_384

    th = threading.Thread(target=seed)
    th.start()
    try:
        import time
        start = time.monotonic()
        live = 0
        while live < 600_000:  # two seconds of the live share
            cap.acquire(10_000, live=True)
            live += 10_000
        live_time = time.monotonic() - start
    finally:
        stop.set()
        th.join()
    total_time = time.monotonic() - start
    # the whole link never exceeded the cap, but for what the bucket may save up while a starved
    # thread sleeps past its time (at most BURST_SECONDS of the rate) and one chunk in flight …
    assert sent["bulk"] + live <= 1_000_000 * (total_time * 1.05 + BURST_SECONDS) + 16_384
    # … and the live sender was not starved: at least its share of the cap (wide margin, loaded host)
    assert live / live_time >= 0.3 * 1_000_000 * 0.5


def test_batch_size_follows_the_cap():
    cap = LinkRateCap(schedule_of(20, []), now=lambda: dt.datetime(2026, 12, 6, 12))
    assert cap.batch_bytes(32 << 20) == 2_500_000
    assert LinkRateCap(schedule_of(0, [])).batch_bytes(32 << 20) == 32 << 20
    assert LinkRateCap(schedule_of(0.1, [])).batch_bytes(32 << 20) == 128 * 1024


def test_chunks_are_the_bytes_in_order():
    t = FakeTime()
    cap = LinkRateCap(schedule_of(1, []), clock=t.clock, sleep=t.sleep, now=lambda: dt.datetime(2026, 12, 6, 12))
    data = bytes(range(256)) * 1000
    assert b"".join(cap.chunks(data, live=True, size=4096)) == data
    assert t.t - 1000.0 == pytest.approx(len(data) * FRAMING / 125_000, abs=BURST_SECONDS + 0.01)
