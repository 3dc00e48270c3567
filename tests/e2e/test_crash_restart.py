"""kill -9 of either gateway in the middle of seeding and in the middle of a burst of changes.

After a restart the standby must end equal to the primary with no duplicate message
(the comparison counts each (hash, flags, date) key, so a duplicate shows as a count of 2).
"""
from __future__ import annotations

import random
import time

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob"]


def body(i: int, user: str, size: int = 20_000) -> bytes:
    rnd = random.Random(i)
    filler = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(size))
    lines = "\r\n".join(filler[k : k + 76] for k in range(0, len(filler), 76))
    return (f"Subject: seed {i} for {user}\r\nMessage-ID: <s{i}.{user}@x>\r\n\r\n{lines}\r\n").encode()


def wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("victim", ["source", "recovery"])
def test_kill9_during_seeding_and_during_a_burst(victim, dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    pair = GatewayPair(
        tmp_path, primary, standby, users=USERS, fetch_chunk=60,
        source_state=f"sqlite:///{tmp_path}/source.sqlite", recovery_state=f"sqlite:///{tmp_path}/recovery.sqlite",
    )
    for u in USERS:
        for i in range(1200):
            primary.deliver(u, body(i, u), folder="Archive" if i % 3 == 0 else None)
    pair.start()
    try:
        pair.protect(*USERS)
        proc = pair.source if victim == "source" else pair.recovery

        def mid_seeding() -> bool:
            st = pair.status()["alice"]
            if victim == "source":
                return st["phase"] == "seeding" and st["last_captured_seq"] >= 100
            return 50 <= st["last_applied_seq"] < st["last_captured_seq"] - 200

        wait_for(mid_seeding, what="seeding under way")
        proc.kill9()
        time.sleep(0.5)
        proc.start()
        pair.wait_synced(USERS, timeout=240)
        for u in USERS:
            assert_same_mailbox(primary, standby, u)
        # chunks of 60 seed messages (about 1.2 MB) went to the source's outbox spool: what a
        # killed capture left there was swept at the restart, the rest removed once applied
        spool = tmp_path / "source.outbox"
        assert spool.is_dir()
        wait_for(lambda: not list(spool.glob("*.seg")), timeout=10, what="the source's outbox spool emptied")

        # a burst of changes, and a kill in the middle of it
        M = primary.imap("alice")
        M.select("INBOX")
        M.uid("STORE", "1:200", "+FLAGS", "(\\Flagged)")
        for i in range(600, 700):
            primary.deliver("alice", body(i, "alice", 4000))
        M.uid("MOVE", "201:260", "Archive")
        M.uid("STORE", "261:300", "+FLAGS", "(\\Deleted)")
        M.expunge()
        time.sleep(0.3)
        proc.kill9()
        M.uid("STORE", "301:350", "+FLAGS", "(\\Seen $Label2)")
        M.logout()
        time.sleep(0.5)
        proc.start()
        pair.wait_synced(USERS, timeout=240)
        for u in USERS:
            assert_same_mailbox(primary, standby, u)
    finally:
        pair.stop()
