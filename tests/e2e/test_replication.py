"""End to end on two real Dovecot instances and two gateway processes.

3 protected users and 1 unprotected; mail by LMTP; then every kind of user change on the
primary; the standby's protected mailboxes must end equal (per folder: SHA-256 of BODY[],
flags and keywords, internal dates) and the unprotected user must be absent from the standby.
Runs once with SQLite and once with PostgreSQL as the gateways' state store.
"""
from __future__ import annotations

import os

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob", "carol", "dave"]
PROTECTED = ["alice", "bob", "carol"]


def message(i: int, user: str, extra: bytes = b"") -> bytes:
    return (
        f"From: sender{i}@example.org\r\nTo: {user}@example.org\r\nSubject: message {i} for {user}\r\n"
        f"Message-ID: <{i}.{user}@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i % 60:02d}:00 +0200\r\n"
        f"\r\nHello {user}, this is message {i}.\r\n"
    ).encode() + extra


def uid_of(M, subject: str) -> bytes:
    typ, data = M.uid("SEARCH", None, "HEADER", "Subject", f'"{subject}"')
    assert typ == "OK" and data[0], f"no message {subject!r}"
    return data[0].split()[0]


def test_replicates_every_kind_of_change(dovecot_factory, gateway_states, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    src_state, rec_state = gateway_states
    pair = GatewayPair(tmp_path, primary, standby, users=USERS, source_state=src_state, recovery_state=rec_state)
    pair.start()
    try:
        for u in USERS:
            for i in range(12):
                primary.deliver(u, message(i, u), folder="Lists/dev" if i % 4 == 0 else None)
        pair.protect(*PROTECTED)
        pair.wait_synced(PROTECTED)
        for u in PROTECTED:
            assert_same_mailbox(primary, standby, u)

        # a big, incompressible message, so that a re-sent body would show in the wire bytes
        big = message(100, "alice", os.urandom(3 * 1024 * 1024).hex().encode()[:3_000_000] + b"\r\n")
        primary.deliver("alice", big)
        pair.wait_synced(PROTECTED)

        M = primary.imap("alice")
        M.select("INBOX")
        M.uid("STORE", uid_of(M, "message 1 for alice"), "+FLAGS", "(\\Flagged $Label1)")
        M.uid("STORE", uid_of(M, "message 2 for alice"), "+FLAGS", "(\\Flagged)")
        M.uid("STORE", uid_of(M, "message 2 for alice"), "-FLAGS", "(\\Flagged)")
        M.uid("STORE", uid_of(M, "message 3 for alice"), "+FLAGS", "(\\Seen)")
        M.uid("STORE", uid_of(M, "message 5 for alice"), "+FLAGS", "(\\Deleted)")
        M.expunge()
        M.create("Projects")
        M.create("Projects/2024")
        M.uid("MOVE", uid_of(M, "message 6 for alice"), "Projects/2024")
        M.rename("Projects", "Work")
        M.create("Scratch")
        M.delete("Scratch")
        M.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\nMessage-ID: <d1@x>\r\n\r\nfirst version\r\n")
        M.logout()
        pair.wait_synced(PROTECTED)

        before = pair.wire_bytes()
        M = primary.imap("alice")
        M.select("INBOX")
        M.uid("MOVE", uid_of(M, "message 100 for alice"), "Archive")
        M.select("Drafts")
        old = uid_of(M, "draft")
        M.append("Drafts", "(\\Draft \\Seen)", None, b"Subject: draft\r\nMessage-ID: <d1@x>\r\n\r\nsecond version\r\n")
        M.uid("STORE", old, "+FLAGS", "(\\Deleted)")
        M.uid("EXPUNGE", old)
        M.logout()
        pair.wait_synced(PROTECTED)
        shipped = pair.wire_bytes() - before
        assert shipped < 64 * 1024, f"the move re-sent the body: {shipped:.0f} bytes shipped"

        M = primary.imap("bob")
        M.select("Lists/dev")
        M.uid("STORE", "1:*", "+FLAGS", "(\\Seen)")
        M.logout()
        pair.wait_synced(PROTECTED)

        for u in PROTECTED:
            assert_same_mailbox(primary, standby, u)
        assert not (standby.base / "mail" / "dave").exists(), "the unprotected user reached the standby"
        st = pair.status()
        assert st["dave"]["protected"] is False and st["dave"]["last_captured_seq"] == 0
    finally:
        pair.stop()
