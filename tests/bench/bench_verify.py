#!/usr/bin/env python3
"""Verify benchmark: how long ``verify`` takes on one replicated mailbox, with and without the
cheap first pass.

Not a test: it prints figures (the machines are noisy, so nothing here asserts a speed).

1. A primary and a standby Dovecot, both gateways as real processes; one mailbox of ``--count``
   messages of about ``--size`` bytes (random text) in 4 folders, protected and seeded.
2. ``verify`` of the equal copies: the cheap pass proves every folder equal (no body is read).
3. One flag changed on the standby in every folder behind the gateways' back: every folder is
   listed message by message on both sides (bodies streamed and hashed), the differences are
   confirmed twice with the queues settled in between, and the verdict is ``different``.

Peak RSS of each gateway is the kernel's VmHWM of its process.

    python tests/bench/bench_verify.py [--count 2000] [--size 20000]
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.gateways import GatewayPair  # noqa: E402

USER = "alice"
FOLDERS = (None, "Archive", "Lists", "Work")


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def message(i: int, size: int) -> bytes:
    text = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return (f"From: s{i}@example.org\r\nTo: {USER}@example.org\r\nSubject: bench {i}\r\n"
            f"Message-ID: <bench.{i}@example.org>\r\n\r\n").encode() + text


def verify(pair: GatewayPair) -> tuple[float, dict]:
    with pair.source.api() as c:
        t0 = time.monotonic()
        job = c.post("/api/v1/verify", json={"addresses": [USER], "settle_timeout": 120}).json()["job"]
        while True:
            report = c.get(f"/api/v1/verify/{job}").json()
            if report["state"] != "running":
                return time.monotonic() - t0, report
            time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=20000)
    args = ap.parse_args()
    primary, standby = DovecotServer("primary", [USER]), DovecotServer("standby", [USER])
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        try:
            primary.start()
            standby.start()
            total = 0
            for k, folder in enumerate(FOLDERS):
                raws = [message(i, args.size) for i in range(k, args.count, len(FOLDERS))]
                total += sum(len(r) for r in raws)
                primary.deliver_many(USER, raws, folder=folder)
            tmpd = Path(tmp)
            pair = GatewayPair(tmpd, primary, standby, users=[USER], source_state=f"sqlite:///{tmpd / 's.sqlite'}",
                               recovery_state=f"sqlite:///{tmpd / 'r.sqlite'}")
            pair.start()
            try:
                pair.protect(USER)
                pair.wait_synced([USER], timeout=1800)
                print(f"mailbox: {args.count} messages, {total / 1e6:.1f} MB in {len(FOLDERS)} folders")
                rss0 = vm_hwm_mb(pair.source.proc.pid), vm_hwm_mb(pair.recovery.proc.pid)
                took, report = verify(pair)
                m = report["mailboxes"][0]
                print(f"equal copies (cheap pass): {took:.2f} s, verdict {m['verdict']}, "
                      f"folders listed {m['folders_listed']}/{m['folders_checked']}")
                S = standby.imap(USER)
                for folder in FOLDERS:
                    S.select(folder or "INBOX")
                    S.store("1", "+FLAGS", "($Bench)")
                S.logout()
                took, report = verify(pair)
                m = report["mailboxes"][0]
                print(f"one flag changed per folder (full listing, confirmed twice): {took:.2f} s, verdict "
                      f"{m['verdict']}, {len(m['differences'])} differences, folders listed {m['folders_listed']}, "
                      f"{m['messages_checked']} messages read on the primary "
                      f"({m['messages_checked'] / took:.0f} msg/s, {3 * total / 1e6 / took:.1f} MB/s per side)")
                rss1 = vm_hwm_mb(pair.source.proc.pid), vm_hwm_mb(pair.recovery.proc.pid)
                print(f"peak RSS source/recovery: {rss0[0]:.0f}/{rss0[1]:.0f} MB after seeding, "
                      f"{rss1[0]:.0f}/{rss1[1]:.0f} MB after verify")
            finally:
                pair.stop()
        except httpx.HTTPError as exc:
            sys.exit(f"bench_verify: {exc}")
        finally:
            standby.cleanup()
            primary.cleanup()


if __name__ == "__main__":
    main()
