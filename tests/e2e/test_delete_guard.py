"""The mass-delete guard end to end on real Dovecot servers.

80 % of two mailboxes deleted on the primary: the standby keeps every message, the alarm is up
(mailbox status, /metrics, the alarms list, the audit log); other changes keep flowing; ``mailrepl
guard --release`` makes the standby equal to the primary, ``--discard`` leaves the messages on the
standby; 100 ordinary deletes of a third mailbox spread over time do not trip it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.mailcompare import assert_same_mailbox, snapshot, total_messages
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot]

USERS = ["alice", "bob"]
# a 3 s window: 24 of 30 deleted at once trip it; 100 of 200 spread over 12 s (about 25 in any 3 s,
# fewer than half the mailbox) do not — the same 100 at once would
GUARD = "\n[guard]\nmin_messages = 10\nshare_percent = 50\nwindow_minutes = 0.05\n[alerts]\ninterval = 1\n"


def msg(i: int, user: str) -> bytes:
    return f"Subject: keep {i}\r\nMessage-ID: <g{i}.{user}@x>\r\n\r\nmessage {i} of {user}\r\n".encode()


def cli(pair: GatewayPair, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrepl", *args, "--url", pair.recovery.url, "--token",
                           ADMIN_TOKEN], check=False, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_a_mass_delete_is_held_until_released_or_discarded(dovecot_factory, tmp_path):
    everyone = [*USERS, "carol"]
    primary = dovecot_factory("primary", everyone)
    standby = dovecot_factory("standby", everyone)
    pair = GatewayPair(tmp_path, primary, standby, users=everyone, recovery_extra=GUARD,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    for u in USERS:
        primary.deliver_many(u, [msg(i, u) for i in range(30)])
    primary.deliver_many("carol", [msg(i, "carol") for i in range(200)])
    pair.start()
    try:
        pair.protect(*everyone)
        pair.wait_synced(everyone)
        # ordinary use: 100 deletes, 5 at a time, spread over 12 s
        C = primary.imap("carol", master=True)
        C.select("INBOX")
        for k in range(20):
            uids = f"{1 + 5 * k}:{5 + 5 * k}"
            C.uid("STORE", uids, "+FLAGS", "(\\Deleted)")
            C.uid("EXPUNGE", uids)
            time.sleep(0.6)
        C.logout()
        pair.wait_synced(everyone)
        assert_same_mailbox(primary, standby, "carol")
        for u in USERS:
            M = primary.imap(u, master=True)
            M.select("INBOX")
            M.uid("STORE", "1:24", "+FLAGS", "(\\Deleted)")
            M.uid("EXPUNGE", "1:24")
            M.logout()
        pair.wait_synced(USERS)
        primary.deliver("alice", msg(99, "alice"))  # other changes keep flowing
        pair.wait_synced(USERS)
        for u in USERS:
            assert total_messages(snapshot(standby, u)) == 30 + (u == "alice"), u
        with pair.recovery.api() as c:
            status = {m["address"]: m for m in c.get("/api/v1/mailboxes").json()["mailboxes"]}
            metrics = c.get("/metrics").text
            detail = c.get("/api/v1/mailboxes/alice").json()

            def alarmed() -> set:
                return {a["address"] for a in c.get("/api/v1/alarms").json() if a["kind"] == "mass-delete-hold"}

            eventually(lambda: alarmed() == set(USERS), timeout=20, what="the mass-delete alarm")
            audit = c.get("/api/v1/audit").json()["entries"]
        assert status["alice"]["held_deletions"] == 24 and status["bob"]["held_deletions"] == 24
        assert detail["holds"][0]["held"] == 24 and "mailrepl guard" in detail["holds"][0]["message"]
        assert 'mailrepl_recovery_guard_tripped{address="alice",server="primary"} 1.0' in metrics
        assert [e for e in audit if e["principal"] == "mass-delete-guard"]
        listed = cli(pair, "guard")
        assert listed.returncode == 0 and "primary/alice" in listed.stdout and "primary/bob" in listed.stdout

        r = cli(pair, "guard", "alice", "--release")
        assert r.returncode == 0 and "24 held changes played" in r.stdout, r.stdout + r.stderr
        assert_same_mailbox(primary, standby, "alice")
        r = cli(pair, "guard", "bob", "--discard")
        assert r.returncode == 0 and "24 deletions dropped" in r.stdout, r.stdout + r.stderr
        assert total_messages(snapshot(standby, "bob")) == 30 and total_messages(snapshot(primary, "bob")) == 6
        assert cli(pair, "guard", "--json").stdout.count('"address"') == 0
        assert status["carol"]["held_deletions"] is None, "ordinary deletes do not trip the guard"
        # replication goes on: a later change reaches the standby
        primary.deliver("bob", msg(100, "bob"))
        pair.wait_synced(USERS)
        assert total_messages(snapshot(standby, "bob")) == 31
    finally:
        pair.stop()
