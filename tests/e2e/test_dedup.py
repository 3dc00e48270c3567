"""Each attachment crosses the WAN once: 50 recipients, a later re-send, and garbage collection.

Dovecot's LMTP delivery gives every recipient its own copy with its own headers, so the 50
messages differ as wholes; only the attachment part is shared. The wire must carry it once:
total < 1.2 x the attachment size + 64 KiB per 10 mailboxes of skeletons, headers and changes
(the overhead this test states and checks).
"""
from __future__ import annotations

import base64
import os

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = [f"user{i:02d}" for i in range(50)]
ATTACHMENT = 5 * 1024 * 1024


def with_attachment(subject: str, text: str, payload: bytes, boundary: str) -> bytes:
    b64 = base64.b64encode(payload).decode()
    lines = "\r\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    return (
        f"From: reports@example.org\r\nTo: staff@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{boundary}@example.org>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream; name=\"q3.bin\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{lines}\r\n--{boundary}--\r\n"
    ).encode()


def test_one_attachment_for_50_mailboxes_crosses_the_wan_once(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    pair = GatewayPair(tmp_path, primary, standby, users=USERS,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect(*USERS)
        pair.wait_synced(USERS, timeout=180)
        base = pair.wire_bytes()

        payload = os.urandom(ATTACHMENT)  # incompressible: only dedup can keep the wire small
        raw = with_attachment("Q3 figures", "See attached.", payload, "b-q3")
        for u in USERS:  # each recipient gets its own copy (Dovecot adds per-recipient headers)
            primary.deliver(u, raw)
        pair.wait_synced(USERS, timeout=300)
        first = pair.wire_bytes() - base
        budget = 1.2 * ATTACHMENT + 64 * 1024 * len(USERS) / 10
        assert first < budget, f"{first:,.0f} bytes on the wire for one 5 MiB attachment to 50 mailboxes"
        parts = pair.blob_files()
        big = [k for k, size in parts.items() if size > ATTACHMENT]
        assert len(big) == 1, f"the attachment must be stored once at DR, found {len(big)} copies"

        # days later: a new message, to one mailbox, with the same attachment -> not sent again
        before = pair.wire_bytes()
        primary.deliver("user07", with_attachment("Q3 figures, again", "Sending it once more.", payload, "b-again"))
        pair.wait_synced(USERS, timeout=120)
        again = pair.wire_bytes() - before
        assert again < 64 * 1024, f"{again:,.0f} bytes on the wire for an attachment the DR side holds"

        st = pair.status()
        counts = st["user07"]["bytes"]
        assert counts["saved_by_dedup"] > ATTACHMENT, counts
        assert sum(m["bytes"]["shipped_raw"] for m in st.values()) > 50 * ATTACHMENT
        for u in ("user00", "user07", "user49"):
            assert_same_mailbox(primary, standby, u)
    finally:
        pair.stop()


def test_garbage_collection_keeps_referenced_parts_only(dovecot_factory, tmp_path):
    users = ["alice", "bob"]
    primary = dovecot_factory("primary", users)
    standby = dovecot_factory("standby", users)
    pair = GatewayPair(tmp_path, primary, standby, users=users,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        shared_part, alice_only = os.urandom(300_000), os.urandom(200_000)
        for u in users:
            primary.deliver(u, with_attachment("shared", "for both", shared_part, "b-shared"))
        primary.deliver("alice", with_attachment("alice only", "just alice", alice_only, "b-alice"))
        pair.protect(*users)
        pair.wait_synced(users)
        assert len(pair.blob_files()) == 2
        report = pair.collect_garbage(grace_seconds=0)
        assert report["parts_deleted"] == 0 and len(pair.blob_files()) == 2, "referenced parts must stay"

        # alice deletes both her messages; bob still has the shared one
        M = primary.imap("alice")
        M.select("INBOX")
        M.uid("STORE", "1:*", "+FLAGS", "(\\Deleted)")
        M.expunge()
        M.logout()
        pair.wait_synced(users)
        report = pair.collect_garbage(grace_seconds=0)
        left = pair.blob_files()
        assert report["parts_deleted"] == 1 and len(left) == 1, report
        assert max(left.values()) < 500_000, "the part only alice's message had must be gone"
        for u in users:
            assert_same_mailbox(primary, standby, u)

        # the shared part is still used: a new message with it to alice does not send it again
        before = pair.wire_bytes()
        primary.deliver("alice", with_attachment("shared again", "back", shared_part, "b-back"))
        pair.wait_synced(users)
        assert pair.wire_bytes() - before < 64 * 1024
        for u in users:
            assert_same_mailbox(primary, standby, u)
    finally:
        pair.stop()
