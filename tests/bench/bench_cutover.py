#!/usr/bin/env python3
"""Cutover and failback benchmark. Not a test: it prints figures (no assertions on time).

1. A primary and a standby Dovecot (from ``deploy/dovecot``), ``--mailboxes`` users with one
   message each plus one user ("big") with ``--messages`` messages; both gateways as real
   processes; every mailbox of the server protected and seeded.
2. The primary is killed; **time to cut over every protected mailbox of the server** with one
   ``POST /api/v1/cutover {"server": "primary", "all": true}`` (drain, DR capture baseline,
   state change), target < 5 s for 1,000 mailboxes.
3. 50 changes on the standby in "big" (20 flag changes, 10 deletes, 10 moves, 10 deliveries);
   the primary is restarted; **failback time** (start -> primary has every change -> confirm ->
   replicating again) and **failback bytes** (the reverse batches received by the source
   gateway) for that mailbox; the primary is then compared with the standby.

    python tests/bench/bench_cutover.py [--mailboxes 1000] [--messages 1000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.gateways import GatewayPair  # noqa: E402
from tests.support.mailcompare import assert_same_mailbox  # noqa: E402

BIG = "big"
FILLER = ("y" * 70 + "\r\n") * 40


def message(i: int, tag: str) -> bytes:
    return (f"From: s{i}@example.org\r\nTo: {tag}@example.org\r\nSubject: {tag} {i}\r\n"
            f"Message-ID: <{tag}.{i}@example.org>\r\n\r\nmessage {i} of {tag}\r\n{FILLER}").encode()


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = pred()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"bench_cutover: timed out waiting for {what}")


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mailboxes", type=int, default=1000, help="small mailboxes besides the big one")
    ap.add_argument("--messages", type=int, default=1000, help="messages in the big mailbox")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    users = [f"u{i:04d}" for i in range(args.mailboxes)] + [BIG]
    tmp = Path(tempfile.mkdtemp(prefix="mailrepl-bench-cutover-"))
    primary, standby = DovecotServer("primary", users), DovecotServer("standby", users)
    pair = None
    figures: dict[str, float | int] = {}
    try:
        primary.start()
        standby.start()
        for u in users[:-1]:
            primary.deliver(u, message(0, u))
        primary.deliver_many(BIG, [message(i, BIG) for i in range(args.messages)])
        pair = GatewayPair(tmp, primary, standby, users=users, source_state=f"sqlite:///{tmp}/s.sqlite",
                           recovery_state=f"sqlite:///{tmp}/r.sqlite", poll_interval=2.0)
        pair.start()
        t0 = time.monotonic()
        with pair.source.api() as c:
            c.put("/api/v1/servers/primary/protection", json={"enabled": True}, timeout=600).raise_for_status()
        pair.wait_synced(users, timeout=3600, settle=2.0)
        figures["seed_seconds"] = round(time.monotonic() - t0, 1)
        print(f"seeded {len(users)} mailboxes in {figures['seed_seconds']} s", flush=True)

        primary.kill()
        with pair.recovery.api() as c:
            t0 = time.monotonic()
            r = c.post("/api/v1/cutover", json={"server": "primary", "all": True}, timeout=600)
            figures["cutover_seconds"] = round(time.monotonic() - t0, 2)
            r.raise_for_status()
            results = r.json()["results"]
        figures["cutover_mailboxes"] = len(results)
        figures["cutover_errors"] = sum(1 for x in results if x["status"] != "ok")
        print(f"cut over {len(results)} mailboxes in {figures['cutover_seconds']} s "
              f"({figures['cutover_errors']} errors; target < 5 s for 1,000)", flush=True)

        # 50 changes on the standby in the big mailbox
        M = standby.imap(BIG)
        M.select("INBOX")
        uids = M.uid("SEARCH", None, "ALL")[1][0].split()
        for u in uids[:20]:
            M.uid("STORE", u, "+FLAGS", r"(\Flagged)")
        for u in uids[20:30]:
            M.uid("STORE", u, "+FLAGS", r"(\Deleted)")
        M.expunge()
        M.create("Archive")
        for u in uids[30:40]:
            M.uid("MOVE", u, "Archive")
        M.logout()
        standby.deliver_many(BIG, [message(i, "new") for i in range(10)])
        time.sleep(3)  # the DR capture picks them up (polls every second)
        primary.start()
        before = metric(pair.source.url, "mailrepl_source_failback_wire_bytes")
        with pair.recovery.api() as c:
            t0 = time.monotonic()
            c.post("/api/v1/failback", json={"addresses": [BIG]}, timeout=600).raise_for_status()

            def caught_up():
                res = c.post("/api/v1/failback", json={"addresses": [BIG]}, timeout=600).json()["results"][0]
                return res.get("failback_queue") == 0 and res.get("dr_captured_seq", 0) > 0

            wait(caught_up, 600, "the primary to apply the standby's changes")
            figures["failback_replay_seconds"] = round(time.monotonic() - t0, 2)
            c.post("/api/v1/failback", json={"addresses": [BIG], "confirm": True}, timeout=600).raise_for_status()
            wait(lambda: c.get(f"/api/v1/mailboxes/{BIG}").json()["site_state"] == "replicating", 600,
                 "replicating again")
            figures["failback_total_seconds"] = round(time.monotonic() - t0, 2)
            report = c.get(f"/api/v1/mailboxes/{BIG}").json()["failback_report"]
        figures["failback_bytes"] = int(metric(pair.source.url, "mailrepl_source_failback_wire_bytes") - before)
        figures["big_mailbox_bytes"] = sum(len(message(i, BIG)) for i in range(args.messages))
        figures["failback_changes"] = report.get("reverse_changes_applied")
        assert_same_mailbox(primary, standby, BIG)
        print(f"failback of {BIG} ({args.messages} messages, 50 changes): "
              f"{figures['failback_replay_seconds']} s to replay, {figures['failback_total_seconds']} s until "
              f"replicating again, {figures['failback_bytes']} bytes received "
              f"(mailbox {figures['big_mailbox_bytes']} bytes); primary equals standby", flush=True)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        if pair is not None:
            pair.stop()
        primary.cleanup()
        standby.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
