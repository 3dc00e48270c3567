"""What one replay pass of one new message costs the recovery gateway's state store, on real
Dovecot servers: the recovery gateway built from its configuration file (its workers not
started), fed by an in-process source (capture engine and shipper, the ingest API through the
ASGI transport), its replay worker's pass run for the mailbox (``RecoveryGateway._replay``: the
standby check, replay, the standby view).

The pass reads the replica and the view once, before replay, and writes the view with a
statement per changed folder: 8 transactions (the check's read, replay's reads of the changes,
the id map and the body, its durable intent, its bookkeeping, the view's write) and 24
statements (11 and 34 before). A change that reads the same rows again, or loads what it only needs a column of,
shows here; the message must still be on the standby, applied, and the view current."""
from __future__ import annotations


import pytest
from mailrepl.recovery.standby_view import is_fresh
from mailrepl.shared.store.models import Replica
from sqlalchemy import event, select

from tests.support.canonical_compare import adapter_for
from tests.support.in_process import in_process_pair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot]

USERS = ["alice", "bob"]
MAX_TRANSACTIONS = 8
MAX_STATEMENTS = 24  # BEGIN and PRAGMA not counted


def message(i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: u@example.org\r\nSubject: pass {i}\r\nMessage-ID: <p{i}@example.org>\r\n"
            f"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\nbody {i}\r\n").encode()


def test_a_pass_of_one_new_message_reads_the_replica_and_the_view_once(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    pair = in_process_pair(tmp_path, primary, standby, USERS[:1])
    gw, mbx_id, shipper, capture = pair.recovery, pair.mailbox_ids["alice"], pair.shipper, pair.capture
    primary_session = adapter_for(primary, "primary").open("alice")
    counts = {"tx": 0, "stmt": 0}
    counting = [False]

    @event.listens_for(gw.store.engine, "begin")
    def _begin(conn):
        if counting[0]:
            counts["tx"] += 1

    @event.listens_for(gw.store.engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, params, context, executemany):
        if counting[0] and not statement.startswith(("BEGIN", "PRAGMA")):
            counts["stmt"] += 1

    def deliver_and_ship(i: int) -> None:
        primary.deliver("alice", message(i))
        capture.cycle(mbx_id, primary_session)
        while shipper.ship_once():
            pass

    def one_pass(rid: int, target: str) -> None:
        session = gw.adapters[target].open("alice")
        try:
            gw._replay(rid, session)
        finally:
            session.close()

    try:
        deliver_and_ship(0)
        with gw.store.read() as s:
            rid, target = s.execute(select(Replica.id, Replica.target).where(Replica.address == "alice")).one()
        one_pass(rid, target)  # seeding
        one_pass(rid, target)  # the view current
        deliver_and_ship(1)
        counting[0] = True
        one_pass(rid, target)
        counting[0] = False
        with gw.store.read() as s:
            rep = s.get(Replica, rid)
            assert rep.applied_seq == rep.received_seq and is_fresh(rep)
        assert_same_mailbox(primary, standby, "alice")
        assert counts["tx"] <= MAX_TRANSACTIONS, counts
        assert counts["stmt"] <= MAX_STATEMENTS, counts
    finally:
        primary_session.close()
        pair.source.dispose()
        gw.store.dispose()
