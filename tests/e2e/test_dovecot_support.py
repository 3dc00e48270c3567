"""The Dovecot test support does what the end-to-end tests rely on, against real servers.

If these fail, every replication test would fail (or, worse, pass) for reasons unrelated to the
gateways: the comparison must see differences, delivery must land where asked, the master user
must work, the size limit must really refuse, and a crashed server must come back with its mail.
"""
from __future__ import annotations

import imaplib
import os
import socket

import pytest

from tests.support.dovecot import DeliveryError
from tests.support.mailcompare import assert_same_mailbox, snapshot, total_messages

pytestmark = pytest.mark.dovecot

DATE = '"03-Sep-2024 10:00:00 +0200"'


def message(i: int, extra: bytes = b"") -> bytes:
    return (f"From: s{i}@example.org\r\nTo: alice@example.org\r\nSubject: support {i}\r\n"
            f"Message-ID: <support{i}@example.org>\r\n\r\nbody {i}\r\n").encode() + extra


def fetch_bodies(conn: imaplib.IMAP4, folder: str) -> list[bytes]:
    typ, _ = conn.select(f'"{folder}"', readonly=True)
    assert typ == "OK"
    typ, data = conn.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    return [item[1] for item in data if isinstance(item, tuple)]


def append(server, user: str, folder: str, raw: bytes, flags: str = "()") -> None:
    conn = server.imap(user)
    try:
        conn.create(f'"{folder}"')  # NO if it exists: fine
        typ, data = conn.append(f'"{folder}"', flags, DATE, raw)
        assert typ == "OK", data
    finally:
        conn.logout()


def port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_two_instances_lmtp_delivery_and_master_login(dovecot_factory):
    primary = dovecot_factory("primary", ["alice", "bob"])
    standby = dovecot_factory("standby", ["alice", "bob"])
    assert len({primary.imap_port, primary.lmtp_port, standby.imap_port, standby.lmtp_port}) == 4
    assert primary.base != standby.base
    assert "!include" not in primary.config.read_text() and "@" + "BASE@" not in primary.config.read_text()

    primary.deliver("alice", message(1))
    assert primary.deliver_many("alice", [message(2), message(3)], folder="Lists/dev") == 2
    primary.deliver("alice", message(4), folder="My Folder")  # needs a quoted LMTP local part

    # delivered where asked, on the primary only; folders were created on the way
    conn = primary.imap("alice", master=True)
    try:
        inbox, dev, mine = (fetch_bodies(conn, f) for f in ("INBOX", "Lists/dev", "My Folder"))
    finally:
        conn.logout()
    assert len(inbox) == 1 and inbox[0].endswith(message(1).split(b"\r\n\r\n", 1)[1])
    assert [b.count(b"Subject: support") for b in dev] == [1, 1]
    assert b"Subject: support 2" in dev[0] and b"Subject: support 3" in dev[1]
    assert len(mine) == 1 and b"Subject: support 4" in mine[0]
    assert "Lists/dev" in primary.doveadm("mailbox", "list", "-u", "alice").split()

    snap = snapshot(primary, "alice")
    assert {"INBOX", "Lists/dev", "My Folder", "Drafts", "Sent", "Trash", "Junk", "Archive"} <= set(snap)
    assert "Lists" not in snap, "a \\Noselect parent must not count as a folder"
    assert total_messages(snap) == 4
    # nothing exists for users that never received mail, on either side
    assert not (primary.base / "mail" / "bob").exists()
    assert not (standby.base / "mail" / "alice").exists()

    # the master user logs in both ways the gateways may use; its password and the target matter
    conn = imaplib.IMAP4("127.0.0.1", primary.imap_port)
    assert conn.login("alice*repl", "secret")[0] == "OK"
    assert conn.select("Lists/dev", readonly=True) == ("OK", [b"2"])
    conn.logout()
    with pytest.raises(imaplib.IMAP4.error):
        conn = imaplib.IMAP4("127.0.0.1", primary.imap_port)
        conn.authenticate("PLAIN", lambda _: b"alice\0repl\0wrong")
    with pytest.raises(imaplib.IMAP4.error):
        primary.imap("mallory", master=True)
    with pytest.raises(DeliveryError):
        primary.deliver("mallory", message(9))


def test_comparison_detects_every_kind_of_difference(dovecot_factory):
    a = dovecot_factory("primary", ["alice"])
    b = dovecot_factory("standby", ["alice"])
    for server in (a, b):
        append(server, "alice", "INBOX", message(1), r"(\Seen)")
        append(server, "alice", "INBOX", message(2))
        append(server, "alice", "Lists/dev", message(3), "($Label1)")
    assert_same_mailbox(a, b, "alice")
    assert snapshot(a, "alice") == snapshot(b, "alice")

    # a flag differs
    conn = b.imap("alice")
    conn.select("INBOX")
    conn.store("2", "+FLAGS", r"(\Flagged)")
    with pytest.raises(AssertionError, match=r"(?s)folder 'INBOX'.*flags=\{\}.*flags=\{\\Flagged\}"):
        assert_same_mailbox(a, b, "alice")
    conn.store("2", "-FLAGS", r"(\Flagged)")
    conn.logout()
    assert_same_mailbox(a, b, "alice")

    # a duplicate: same bytes, flags and date twice on the standby
    append(b, "alice", "Lists/dev", message(3), "($Label1)")
    with pytest.raises(AssertionError, match=r"duplicated on standby \(2 copies, 1 on primary\)"):
        assert_same_mailbox(a, b, "alice")
    b.wipe_user("alice")
    assert not (b.base / "mail" / "alice").exists()

    # after the wipe everything is missing, folder by folder
    with pytest.raises(AssertionError) as info:
        assert_same_mailbox(a, b, "alice")
    text = str(info.value)
    assert "folder 'Lists/dev': only on primary (1 message)" in text
    assert "folder 'INBOX': 2 on primary, 0 on standby" in text and "missing on standby" in text

    # a message only on the standby
    for i in (1, 2):
        append(b, "alice", "INBOX", message(i), r"(\Seen)" if i == 1 else "()")
    append(b, "alice", "Lists/dev", message(3), "($Label1)")
    append(b, "alice", "INBOX", message(5))
    with pytest.raises(AssertionError, match="extra on standby"):
        assert_same_mailbox(a, b, "alice")


def test_max_mail_size_refuses_large_append_only_where_configured(dovecot_factory):
    limited = dovecot_factory("standby", ["alice"], max_mail_size="1M")
    unlimited = dovecot_factory("primary", ["alice"])
    big = message(1, os.urandom(700_000).hex().encode() + b"\r\n")  # 1.4 MB
    for server, accepted in ((unlimited, True), (limited, False)):
        conn = server.imap("alice", master=True)
        try:
            typ, data = conn.append("INBOX", None, None, big)
            assert (typ == "OK") is accepted, (server.name, typ, data)
            if not accepted:
                assert b"[LIMIT]" in data[0], data
            # a small message after the refusal is still accepted
            assert conn.append("INBOX", None, None, message(2))[0] == "OK"
        finally:
            conn.logout()
    assert total_messages(snapshot(unlimited, "alice")) == 2
    assert total_messages(snapshot(limited, "alice")) == 1
    with pytest.raises(DeliveryError):
        limited.deliver("alice", big)


def test_crash_and_restart_keep_mail(dovecot_factory):
    server = dovecot_factory("primary", ["alice"], mail_fsync="optimized")
    server.deliver_many("alice", [message(i) for i in range(20)])
    server.deliver("alice", message(99), folder="Archive")
    conn = server.imap("alice")
    conn.select("INBOX")
    conn.store("1:5", "+FLAGS", r"(\Flagged)")  # session left open: the crash interrupts it
    before = snapshot(server, "alice")
    ports = (server.imap_port, server.lmtp_port)

    server.kill()
    assert not server.running
    assert all(port_closed(p) for p in ports)
    with pytest.raises((OSError, imaplib.IMAP4.abort)):
        conn.noop()

    server.start()
    assert (server.imap_port, server.lmtp_port) == ports
    assert snapshot(server, "alice") == before
    server.restart()
    assert snapshot(server, "alice") == before
    assert total_messages(before) == 21
