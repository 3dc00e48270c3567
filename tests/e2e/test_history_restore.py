"""Point-in-time restore end to end on real Dovecot servers, against snapshots of the primary.

A small mailbox lives through flags, folders, moves, two folder renames and a mass delete while
it replicates; the test snapshots the primary (SHA-256, flags, internal date per folder) at
three times. ``mailrepl restore --at T`` for each gives exactly that mailbox under
``Restored/<T>/`` (written on the primary, replicated to the standby like any mail); the mbox
and zip exports read back and re-imported into another mailbox give it too.
"""
from __future__ import annotations

import imaplib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from mailrepl.recovery.restore_plan import restored_prefix
from mailrepl.recovery.restore_writers import read_export

from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.mailcompare import assert_same_mailbox, snapshot
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot]

USERS = ["alice", "rita", "zoe"]
HISTORY = "\n[history]\nretention_days = 1\nsnapshot_every_changes = 8\ncheck_interval = 1\n"


def msg(i: int) -> bytes:
    return (f"From: sender{i % 3}@example.org\r\nSubject: note {i}\r\nMessage-ID: <h{i}@x>\r\n\r\n"
            f"From the history test, message {i}.\r\n" + "x" * (200 * i) + "\r\n").encode()


def nonempty(snap: dict) -> dict:
    return {f: c for f, c in snap.items() if c}


def under(snap: dict, prefix: str) -> dict:
    return {f[len(prefix) + 1:]: c for f, c in snap.items() if f.startswith(prefix + "/") and c}


def moment(pair: GatewayPair, primary) -> tuple[datetime, dict]:
    """Replicated, a capture cycle idle; the time and the primary's mailbox now."""
    pair.wait_synced(["alice"])
    at = datetime.now(UTC)
    time.sleep(0.05)
    return at, nonempty(snapshot(primary, "alice"))


def cli(pair: GatewayPair, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrepl", *args, "--url", pair.recovery.url, "--token",
                           ADMIN_TOKEN], check=False, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def reimport(server, user: str, exported) -> None:
    M = server.imap(user, master=True)
    try:
        for m in exported:
            if m.folder != "INBOX":
                M.create(f'"{m.folder}"')
            when = imaplib.Time2Internaldate(datetime.fromisoformat(m.internaldate))
            typ, data = M.append(f'"{m.folder}"', f"({' '.join(m.flags)})", when, m.body)
            assert typ == "OK", data
    finally:
        M.logout()


def test_restore_at_three_times_and_export_reimport(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    pair = GatewayPair(tmp_path, primary, standby, users=USERS, with_primaries=True, recovery_extra=HISTORY,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    primary.deliver_many("alice", [msg(i) for i in range(10)])
    primary.deliver_many("alice", [msg(i) for i in range(10, 13)], folder="Work")
    M = primary.imap("alice", master=True)
    M.select("INBOX")
    M.uid("STORE", "1:3", "+FLAGS", "(\\Seen)")
    M.uid("STORE", "2", "+FLAGS", "(\\Flagged $Important)")
    pair.start()
    try:
        pair.protect("alice")
        pair.wait_synced(["alice"])
        M.uid("MOVE", "4:5", "Work")
        M.uid("STORE", "6", "+FLAGS", "(\\Answered)")
        t_move, after_move = moment(pair, primary)
        M.rename("Work", "Projects")
        primary.deliver("alice", msg(20), folder="Projects")
        t_between, between_renames = moment(pair, primary)
        M.rename("Projects", "Old")
        t_before, before_delete = moment(pair, primary)
        M.select("INBOX")
        M.uid("STORE", "1:10", "+FLAGS", "(\\Deleted)")  # 6 of the 8 left: with Old's 6, most of the mail
        M.uid("EXPUNGE", "1:10")
        M.logout()
        pair.wait_synced(["alice"])
        assert "Projects" in between_renames and "Work" in after_move and "Old" in before_delete

        for at, expected in ((t_before, before_delete), (t_between, between_renames), (t_move, after_move)):
            r = cli(pair, "restore", "alice", "--at", at.isoformat())
            assert r.returncode == 0, r.stdout + r.stderr
            assert "restored" in r.stdout
            got = under(nonempty(snapshot(primary, "alice")), restored_prefix(at))
            assert got == expected, at
        # restored messages are ordinary mail: replicated to the standby
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
        # the same restore again (as after an interruption) writes nothing twice
        r = cli(pair, "restore", "alice", "--at", t_move.isoformat(), "--json")
        held = sum(sum(c.values()) for c in after_move.values())
        assert r.returncode == 0 and f'"already_there": {held}' in r.stdout, r.stdout + r.stderr

        # exports: read back byte-exact, and re-imported into another mailbox
        for user, name in (("rita", "before.mbox"), ("zoe", "before.zip")):
            out = tmp_path / name
            r = cli(pair, "restore", "alice", "--at", t_before.isoformat(), "--export", str(out))
            assert r.returncode == 0, r.stdout + r.stderr
            reimport(primary, user, list(read_export(out)))
            assert nonempty(snapshot(primary, user)) == before_delete

        r = cli(pair, "history", "alice", "--json")
        assert r.returncode == 0 and '"from_start": true' in r.stdout, r.stdout + r.stderr
        eventually(lambda: 'kind="bodies"' in pair.recovery.api().get("/metrics").text, timeout=10,
                   what="history bytes on /metrics")
    finally:
        pair.stop()
