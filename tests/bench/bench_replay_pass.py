#!/usr/bin/env python3
"""CPU of the recovery gateway per replay pass of one new message, on real Dovecot servers.

Not a test: it prints figures. Where ``bench_lag.py`` times the whole system on a shared host
(two gateways, two Dovecots, the LMTP sender: noisy), this one measures only the recovery
gateway's own work for one replicated delivery, in process and in CPU seconds of the thread that
does it, so that a change to the pass can be compared on a busy machine:

1. starts a primary and a standby Dovecot with ``--mailboxes`` users, builds the recovery
   gateway from a configuration file as it runs (``RecoveryGateway``, its workers not started)
   and feeds it from an in-process source (capture engine and shipper, the ingest API through
   the ASGI transport);
2. seeds every mailbox (``--initial`` messages) and replays it until its standby view is current;
3. ``--passes`` times: delivers one message to the next mailbox in turn, captures and ships it,
   then runs the replay worker's pass for that mailbox (``RecoveryGateway._replay``: the standby
   check, replay, the standby view) on a session opened for it, as the workers do when the
   connections are fewer than the mailboxes;
4. prints the CPU per pass (thread CPU time: session open, pass, close; and the pass alone),
   with its median and 90th percentile, and the ingest CPU per batch.

    python tests/bench/bench_replay_pass.py [--mailboxes 50] [--passes 300]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mailrepl.recovery.standby_view import is_fresh
from mailrepl.shared.store.models import Replica
from sqlalchemy import select

from tests.support.canonical_compare import adapter_for
from tests.support.dovecot import DovecotServer
from tests.support.in_process import in_process_pair


def message(i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: u@example.org\r\nSubject: pass {i}\r\nMessage-ID: <p{i}@example.org>\r\n"
            f"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\nbody {i}\r\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mailboxes", type=int, default=50)
    ap.add_argument("--passes", type=int, default=300)
    ap.add_argument("--initial", type=int, default=2)
    args = ap.parse_args()
    users = [f"u{i:03d}" for i in range(args.mailboxes)]
    with tempfile.TemporaryDirectory(prefix="mailrepl-bench-pass-") as tmp_name:
        tmp = Path(tmp_name)
        primary = DovecotServer("primary", users)
        standby = DovecotServer("standby", users)
        primary.start()
        standby.start()
        try:
            run(tmp, primary, standby, users, args)
        finally:
            primary.cleanup()
            standby.cleanup()


def run(tmp: Path, primary, standby, users: list[str], args) -> None:
    pair = in_process_pair(tmp, primary, standby, users)
    gw, mids, shipper, capture = pair.recovery, pair.mailbox_ids, pair.shipper, pair.capture
    p_sessions = {}
    for user in users:
        primary.deliver_many(user, [message(-1 - i) for i in range(args.initial)])
    for user in users:
        p_sessions[user] = primary_session = adapter_for(primary, "primary").open(user)
        capture.cycle(mids[user], primary_session)
    ingest_cpu: list[float] = []

    def ship() -> None:
        t0 = time.thread_time()
        while shipper.ship_once():
            pass
        ingest_cpu.append(time.thread_time() - t0)  # the in-process source's share included

    ship()
    with gw.store.read() as s:
        rids = dict(s.execute(select(Replica.address, Replica.id)).all())
        target = {a: t for a, t in s.execute(select(Replica.address, Replica.target))}

    def one_pass(user: str) -> tuple[float, float]:
        t0 = time.thread_time()
        session = gw.adapters[target[user]].open(user)
        t1 = time.thread_time()
        gw._replay(rids[user], session)
        t2 = time.thread_time()
        session.close()
        return time.thread_time() - t0, t2 - t1

    for user in users:  # seeding, then a pass that finds the view current
        one_pass(user)
        one_pass(user)
        with gw.store.read() as s:
            assert is_fresh(s.get(Replica, rids[user])), user
    ingest_cpu.clear()
    whole, alone = [], []
    for i in range(args.passes):
        user = users[i % len(users)]
        primary.deliver(user, message(i))
        capture.cycle(mids[user], p_sessions[user])
        ship()
        w, a = one_pass(user)
        whole.append(w)
        alone.append(a)
    with gw.store.read() as s:
        behind = [a for a, rid in rids.items() if not is_fresh(s.get(Replica, rid))
                  or s.get(Replica, rid).applied_seq != s.get(Replica, rid).received_seq]
    for session in p_sessions.values():
        session.close()
    pair.source.dispose()
    gw.store.dispose()

    def ms(xs: list[float]) -> str:
        xs = sorted(xs)
        return (f"mean {1000 * statistics.fmean(xs):.2f} ms  median {1000 * statistics.median(xs):.2f} ms  "
                f"p90 {1000 * xs[int(0.9 * (len(xs) - 1))]:.2f} ms")

    print(f"{args.passes} passes of one new message over {len(users)} mailboxes (thread CPU time)")
    print(f"  open + pass + close: {ms(whole)}")
    print(f"  pass alone:          {ms(alone)}")
    print(f"  ship (the source's send and the recovery gateway's ingest, in process): {ms(ingest_cpu)}")
    print(f"  replicas behind or with a stale view at the end: {len(behind)}")
    print(f"  load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
