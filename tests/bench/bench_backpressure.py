#!/usr/bin/env python3
"""Back-pressure benchmark: a long outage of the recovery gateway with many deliveries.

Not a test: it prints figures (nothing here asserts a speed).

1. A primary and a standby Dovecot; the source gateway alone (the recovery gateway is down), with
   a copy-queue bound of ``--bound`` changes; one protected mailbox.
2. ``--count`` messages of about ``--size`` bytes are delivered in rounds while the source's
   resident memory (VmRSS), the captured sequence and the queue's bytes are sampled after each
   round: the queue grows to the bound and stops there, memory stays flat.
3. The recovery gateway starts: the time until the standby equals the primary (the queue
   drains, capture resumes and catches up by itself), and the gateways' peak RSS (VmHWM).

    python tests/bench/bench_backpressure.py [--count 6000] [--size 20000] [--bound 3000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.gateways import ADMIN_TOKEN, GatewayPair  # noqa: E402
from tests.support.mailcompare import assert_same_mailbox  # noqa: E402

USER = "alice"


def proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def message(i: int, size: int) -> bytes:
    line = (f"line {i} " * 10)[:76].encode() + b"\r\n"
    return f"Subject: m{i}\r\nMessage-ID: <bench-bp-{i}@x>\r\n\r\n".encode() + line * max(1, size // 78)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=6000, help="messages delivered during the outage")
    ap.add_argument("--size", type=int, default=20000, help="bytes per message (about)")
    ap.add_argument("--bound", type=int, default=3000, help="queue_max_changes of the source gateway")
    ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailrepl-bench-bp-"))
    primary, standby = DovecotServer("primary", [USER]), DovecotServer("standby", [USER])
    pair = None
    try:
        primary.start()
        standby.start()
        pair = GatewayPair(work, primary, standby, users=[USER], source_state=f"sqlite:///{work}/s.sqlite",
                           recovery_state=f"sqlite:///{work}/r.sqlite",
                           source_gateway_extra=f"queue_max_changes = {a.bound}\nmailbox_queue_max_changes = {a.bound}\n")
        pair.source.start()
        pair.protect(USER)
        pid = pair.source.proc.pid
        print(f"recovery gateway down; bound {a.bound} changes; {a.count} messages of ~{a.size} bytes")
        print(f"{'delivered':>9} {'captured':>9} {'queue MB':>9} {'alarm':>5} {'RSS MB':>7}")
        per_round = a.count // a.rounds
        t0 = time.monotonic()
        samples = []
        for r in range(a.rounds):
            primary.deliver_many(USER, (message(i, a.size) for i in range(r * per_round, (r + 1) * per_round)))
            time.sleep(1.5)  # a few poll intervals
            st = pair.status()[USER]
            rss = proc_kib(pid, "VmRSS") / 1024
            qbytes = metric(pair.source.url, "mailrepl_source_queue_bytes") / 1e6
            alarm = int(metric(pair.source.url, "mailrepl_source_queue_alarm"))
            samples.append(rss)
            print(f"{(r + 1) * per_round:9d} {st['last_captured_seq']:9d} {qbytes:9.1f} {alarm:5d} {rss:7.1f}")
        print(f"outage: {time.monotonic() - t0:.1f}s; source RSS min/max {min(samples):.1f}/{max(samples):.1f} MB, "
              f"peak (VmHWM) {proc_kib(pid, 'VmHWM') / 1024:.1f} MB")
        t1 = time.monotonic()
        pair.recovery.start()
        pair.wait_synced([USER], timeout=1800, settle=1.0)
        caught = time.monotonic() - t1
        assert_same_mailbox(primary, standby, USER)
        print(f"recovery gateway back: standby equal after {caught:.1f}s "
              f"({per_round * a.rounds / caught:.0f} msg/s); peak RSS source "
              f"{proc_kib(pid, 'VmHWM') / 1024:.1f} MB, recovery {proc_kib(pair.recovery.proc.pid, 'VmHWM') / 1024:.1f} MB")
    finally:
        if pair is not None:
            pair.stop()
        primary.stop()
        standby.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
