"""End to end with Exchange on one side: two gateway processes, the EWS protocol-shape responder
(in this process, on 127.0.0.1) and a real Dovecot.

- Exchange primary -> Dovecot standby: mail, read/flag changes, deletes, moves, folder create,
  rename and delete replicate; MIME arrives byte-exact (the responder stores it verbatim).
- Dovecot primary -> Exchange standby: the same kinds of change made over IMAP.
- Refused credentials show in the status; throttling is waited out; nothing is lost.

Mailboxes are SMTP addresses on both sides (Dovecot strips the domain at login).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from tests.support.ews_compare import ews_snapshot, non_empty
from tests.support.ews_responder import SERVICE_PASSWORD, EwsResponder
from tests.support.gateways import GatewayPair
from tests.support.mailcompare import describe_difference, snapshot

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

ALICE, BOB = "alice@example.org", "bob@example.org"
DATE = datetime(2024, 9, 3, 8, 0, 0, tzinfo=timezone.utc)


def message(i: int) -> bytes:
    return (
        f"From: sender{i}@example.org\r\nTo: {ALICE}\r\nSubject: ews message {i}\r\n"
        f"Message-ID: <{i}.ews@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i % 60:02d}:00 +0200\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nHallo {i}, Gr\xc3\xbc\xc3\x9fe.\r\n"
    ).encode("latin-1")


def assert_same(a, b, label_a: str, label_b: str) -> None:
    diff = describe_difference(non_empty(a), non_empty(b), label_a, label_b)
    assert not diff, diff


@pytest.fixture
def responder():
    with EwsResponder([ALICE, BOB]) as ews:
        yield ews


def test_exchange_primary_to_dovecot_standby(responder, dovecot_factory, tmp_path):
    standby = dovecot_factory("standby", ["alice", "bob"])
    pair = GatewayPair(tmp_path, responder, standby, users=[ALICE, BOB],
                       source_state=f"sqlite:///{tmp_path / 'source.sqlite'}",
                       recovery_state=f"sqlite:///{tmp_path / 'recovery.sqlite'}")
    box = responder.store.mailbox(ALICE)
    with responder.store.lock:
        items = [box.deliver("INBOX", message(i), is_read=i % 3 == 0, flagged=i == 2, received=DATE)
                 for i in range(8)]
        for i in range(8, 11):
            box.deliver("Lists/dev", message(i), categories=["Project"], received=DATE)
    pair.start()
    try:
        pair.protect(ALICE)
        pair.wait_synced([ALICE])
        assert_same(ews_snapshot(responder, ALICE), snapshot(standby, ALICE), "exchange", "dovecot")

        with responder.store.lock:
            box.set_read(items[1].id, True)
            box.set_flagged(items[2].id, False)
            box.set_flagged(items[3].id, True)
            box.delete_item(items[4].id)
            box.move_item(items[5].id, box.path("Lists/dev").id)
            box.update_folder(box.path("Lists").id, name="Work")
            box.deliver("Work/2024", message(50), is_read=True, received=DATE)
            scratch = box.path("Scratch", create=True)
        pair.wait_synced([ALICE])
        with responder.store.lock:
            box.delete_folder(scratch.id)
        pair.wait_synced([ALICE])
        exchange, dovecot = ews_snapshot(responder, ALICE), snapshot(standby, ALICE)
        assert_same(exchange, dovecot, "exchange", "dovecot")
        assert {"Work/dev", "Work/2024"} <= set(dovecot) and "Lists/dev" not in dovecot and "Scratch" not in dovecot
        assert sum(dovecot["INBOX"].values()) == 6
        assert not non_empty(snapshot(standby, BOB)), "an unprotected mailbox is not replicated"
    finally:
        pair.stop()


def test_dovecot_primary_to_exchange_standby(responder, dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice", "bob"])
    pair = GatewayPair(tmp_path, primary, responder, users=[ALICE, BOB],
                       source_state=f"sqlite:///{tmp_path / 'source.sqlite'}",
                       recovery_state=f"sqlite:///{tmp_path / 'recovery.sqlite'}")
    for i in range(10):
        primary.deliver("alice", message(i), folder="Lists/dev" if i % 4 == 0 else None)
    pair.start()
    try:
        pair.protect(ALICE)
        pair.wait_synced([ALICE])
        assert_same(snapshot(primary, "alice"), ews_snapshot(responder, ALICE), "dovecot", "exchange")

        M = primary.imap("alice")
        M.select("INBOX")
        typ, data = M.uid("SEARCH", None, "ALL")
        uids = data[0].split()
        M.uid("STORE", uids[0], "+FLAGS", "(\\Flagged $Label1)")
        M.uid("STORE", uids[1], "+FLAGS", "(\\Seen \\Answered)")
        M.uid("STORE", uids[2], "+FLAGS", "(\\Deleted)")
        M.expunge()
        M.create("Projects")
        M.create("Projects/2024")
        M.uid("MOVE", uids[3], "Projects/2024")
        M.rename("Projects", "Work")
        M.create("Scratch")
        M.delete("Scratch")
        M.logout()
        pair.wait_synced([ALICE])
        dovecot, exchange = snapshot(primary, "alice"), ews_snapshot(responder, ALICE)
        assert_same(dovecot, exchange, "dovecot", "exchange")
        assert "Work/2024" in exchange and sum(exchange["Work/2024"].values()) == 1
        assert "Projects" not in exchange and "Scratch" not in exchange
        stored = [i for f in responder.store.mailbox(ALICE).folders.values() for i in f.items.values()]
        assert stored and all(not i.message_flags & 0x8 for i in stored), "nothing left as a draft"
    finally:
        pair.stop()


def test_refused_credentials_and_throttling_show_in_status_and_lose_nothing(responder, dovecot_factory, tmp_path):
    standby = dovecot_factory("standby", ["alice"])
    pair = GatewayPair(tmp_path, responder, standby, users=[ALICE],
                       source_state=f"sqlite:///{tmp_path / 'source.sqlite'}",
                       recovery_state=f"sqlite:///{tmp_path / 'recovery.sqlite'}")
    box = responder.store.mailbox(ALICE)
    with responder.store.lock:
        for i in range(4):
            box.deliver("INBOX", message(i), received=DATE)
    pair.start()
    try:
        pair.protect(ALICE)
        pair.wait_synced([ALICE])
        responder.password = "rotated-elsewhere"  # the service account's password changed on Exchange
        with responder.store.lock:
            for i in range(4, 7):
                box.deliver("INBOX", message(i), received=DATE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (pair.status()[ALICE].get("error") or ""):
            time.sleep(0.2)
        error = pair.status()[ALICE]["error"] or ""
        assert "AuthenticationFailed" in error and "credentials" in error.lower(), error
        responder.password = SERVICE_PASSWORD  # put back
        responder.faults.busy(3, back_off_ms=300)  # and Exchange is busy for a moment
        pair.wait_synced([ALICE])
        assert pair.status()[ALICE]["error"] is None
        assert_same(ews_snapshot(responder, ALICE), snapshot(standby, ALICE), "exchange", "dovecot")
        assert sum(snapshot(standby, ALICE)["INBOX"].values()) == 7
    finally:
        pair.stop()
