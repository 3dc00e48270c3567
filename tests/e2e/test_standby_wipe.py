"""A mailbox wiped on the standby behind the gateways' back (mail and indexes removed, folders
gone, INBOX recreated with a new UIDVALIDITY): the recovery gateway finds it — after a replay
pass, or by its periodic check when nothing is replicated — and the source resynchronises that
mailbox, so the standby ends equal again (empty folders included), with no duplicate and no
other mailbox touched."""
from __future__ import annotations

import time

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import describe_difference, snapshot

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob"]


def msg(i: int) -> bytes:
    return (f"From: s{i}@example.org\r\nSubject: wipe {i}\r\nMessage-ID: <wipe.{i}@example.org>\r\n\r\n"
            f"body {i}\r\n").encode()


def equal_eventually(pair, primary, standby, users, timeout=90.0) -> None:
    deadline = time.monotonic() + timeout
    diff = ""
    while time.monotonic() < deadline:
        pair.wait_synced(users, timeout=max(1.0, deadline - time.monotonic()))
        diff = "\n".join(d for u in users if (d := describe_difference(snapshot(primary, u), snapshot(standby, u),
                                                                           "primary", "standby")))
        if not diff:
            return
        time.sleep(0.5)
    raise AssertionError(f"the standby did not become equal again:\n{diff}\n--- recovery log ---\n"
                         f"{pair.recovery.log.read_text()[-3000:]}")


def test_wiped_standby_mailbox_is_resynchronised(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    for i in range(6):
        primary.deliver("alice", msg(i), folder="Work" if i % 3 == 0 else None)
        primary.deliver("bob", msg(100 + i))
    M = primary.imap("alice")
    M.create("Empty")
    M.select("INBOX")
    M.uid("STORE", "1:2", "+FLAGS", "(\\Flagged $Label1)")
    pair = GatewayPair(tmp_path, primary, standby, users=USERS, source_state=f"sqlite:///{tmp_path}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/r.sqlite",
                       recovery_gateway_extra="standby_check_interval = 1")
    pair.start()
    try:
        pair.protect(*USERS)
        equal_eventually(pair, primary, standby, USERS)
        bob_before = snapshot(standby, "bob")

        # nothing to replay afterwards: the periodic check finds it
        standby.wipe_user("alice")
        equal_eventually(pair, primary, standby, USERS)
        assert sum(sum(c.values()) for c in snapshot(standby, "alice").values()) == 6
        assert "Empty" in snapshot(standby, "alice")

        # wiped again while changes keep coming: found by the next replay pass
        standby.wipe_user("alice")
        primary.deliver("alice", msg(50))
        M.uid("STORE", "3", "+FLAGS", "(\\Seen)")
        M.uid("MOVE", "4", "Work")
        M.logout()
        equal_eventually(pair, primary, standby, USERS)
        assert snapshot(standby, "bob") == bob_before, "another mailbox was touched"
        assert "resync" in pair.recovery.log.read_text()
    finally:
        pair.stop()
