"""How many writing transactions the engines take, on real Dovecot servers.

With hundreds of protected mailboxes, capture polls every one of them and each writing
transaction on the state store queues for its one writer and is flushed to disk: a cycle that
finds nothing must write nothing, and a replayed change must cost one flushed transaction (its
intent, before the standby's write), its bookkeeping riding along with the next one.
"""
from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.api import ingest_router
from mailrepl.recovery.settings import BoundSource
from mailrepl.recovery.source_access import SourceAccess
from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.engines.receiver import Receiver
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Mailbox, OutboxRow, Replica
from tests.support.in_process import seeding_mailboxes
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot]

TOKEN = "t0ken"


def adapter(name: str, server) -> ImapAdapter:
    return ImapAdapter(name, ImapEndpoint(host="127.0.0.1", port=server.imap_port, tls="none",
                                          service_user=server.master_user,
                                          service_password=server.master_password, auth="sasl-plain"))


def message(i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: alice@example.org\r\nSubject: w{i}\r\nMessage-ID: <w{i}@example.org>\r\n"
            f"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\nbody {i}\r\n").encode()


class Writes:
    """Counts the writing transactions begun on a store: durable ones and relaxed ones."""

    def __init__(self, store) -> None:
        self.durable = self.relaxed = 0
        event.listen(store.engine, "begin", self._begin)

    def _begin(self, conn) -> None:  # noqa: ANN001
        options = conn.get_execution_options()
        if options.get("mailrepl_read_only", False):
            return
        if options.get("mailrepl_durable", True):
            self.durable += 1
        else:
            self.relaxed += 1

    def take(self) -> tuple[int, int]:
        out = (self.durable, self.relaxed)
        self.durable = self.relaxed = 0
        return out


def test_an_idle_capture_cycle_writes_nothing_and_changes_are_still_captured(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    primary.deliver_many("alice", [message(i) for i in range(3)])
    store = open_store(f"sqlite:///{tmp_path}/src.sqlite")
    store.migrate()
    with store.tx() as s:
        s.add(Mailbox(server="primary", address="alice", protected=True, phase="seeding"))
    with store.read() as s:
        mid = s.scalar(select(Mailbox.id))
    capture = CaptureEngine(store, idle_note_seconds=1.0)
    writes = Writes(store)
    session = adapter("primary", primary).open("alice")
    try:
        assert capture.cycle(mid, session).messages == 3  # seeding
        assert writes.take()[0] >= 1
        with store.read() as s:
            mbx = s.get(Mailbox, mid)
            assert mbx.phase == "replicating"
            noted = mbx.last_capture_at
        for _ in range(5):
            report = capture.cycle(mid, session)
            assert report.changes == 0 and report.paused is None
        assert writes.take() == (0, 0)  # five idle cycles: not one writing transaction

        primary.deliver("alice", message(3))
        assert capture.cycle(mid, session).messages == 1
        assert writes.take() == (1, 0)  # the plan and the captured message: one transaction
        uid = max(session.changes_since("INBOX", None).new, key=lambda m: m.uid).uid
        session.store_flags("INBOX", [uid], frozenset({"\\Seen"}))
        report = capture.cycle(mid, session)
        assert report.changes == 1  # a flag change is seen by the cycle that skips idle folders
        assert writes.take() == (1, 0)
        assert capture.cycle(mid, session).changes == 0
        assert writes.take() == (0, 0)
        with store.read() as s:
            kinds = [json.loads(c)["kind"] for c in s.scalars(select(OutboxRow.change).order_by(OutboxRow.seq))]
            assert s.get(Mailbox, mid).last_capture_at > noted  # noted with the work
        assert kinds[-2:] == ["msg.add", "msg.flags"], kinds

        time.sleep(1.1)  # idle_note_seconds: an idle cycle notes when it ran, once
        with store.read() as s:
            before = s.get(Mailbox, mid).last_capture_at
        capture.cycle(mid, session)
        assert writes.take() == (1, 0)
        capture.cycle(mid, session)
        assert writes.take() == (0, 0)
        with store.read() as s:
            assert s.get(Mailbox, mid).last_capture_at > before
    finally:
        session.close()
        store.dispose()


def test_a_batch_is_stored_in_one_transaction_and_a_replayed_message_costs_one_flush(dovecot_factory, tmp_path):
    users = ["alice", "bob", "carol"]
    primary = dovecot_factory("primary", users)
    standby = dovecot_factory("standby", users)
    for user in users:
        primary.deliver_many(user, [message(i) for i in range(2)])
    src = open_store(f"sqlite:///{tmp_path}/src.sqlite")
    src.migrate()
    dst = open_store(f"sqlite:///{tmp_path}/dst.sqlite")
    dst.migrate()
    mids = seeding_mailboxes(src, users)
    bodies = BodyStore(dst, BlobStore(tmp_path / "blobs"))
    standby_adapter = adapter("standby", standby)
    woken: list[int] = []
    receiver = Receiver(dst, bodies, lambda server: "standby", on_received=woken.append)
    app = FastAPI()
    app.include_router(ingest_router(
        receiver, SourceAccess([BoundSource(id="hq", token=TOKEN, servers=("primary",))], lambda server: "standby",
                               {"standby": standby_adapter}), 1 << 30))
    shipper = Shipper(src, "hq", TestClient(app, base_url="http://recovery"), token=TOKEN)
    replay = ReplayEngine(dst, bodies)
    capture = CaptureEngine(src)
    p_sessions = {u: adapter("primary", primary).open(u) for u in users}
    s_sessions = {u: standby_adapter.open(u) for u in users}
    try:
        def ship() -> dict[str, int]:
            while shipper.ship_once():
                pass
            with dst.read() as s:
                return dict(s.execute(select(Replica.address, Replica.id)).all())

        for user in users:
            capture.cycle(mids[user], p_sessions[user])
        rids = ship()
        for user in users:  # seeding: folder creates, two adds each
            replay.replay(rids[user], s_sessions[user])
        writes = Writes(dst)
        for i in range(2, 5):
            woken.clear()
            for user in users:
                primary.deliver(user, message(i))
                capture.cycle(mids[user], p_sessions[user])
            ship()
            # one batch of three mailboxes: stored in one transaction, durable before acknowledged
            assert writes.take() == (1, 0)
            assert sorted(woken) == sorted(rids.values())  # each mailbox's replay is woken, by name
            for user in users:
                report = replay.replay(rids[user], s_sessions[user])
                assert report.applied == 1 and report.appended == 1
                # the intent (before the standby's write) is flushed; the id map and the applied
                # sequence number ride with the next flushed commit
                assert writes.take() == (1, 1)
        for user in users:
            assert replay.replay(rids[user], s_sessions[user]).applied == 0
        assert writes.take() == (0, 0)  # nothing to apply: nothing written
        for user in users:
            assert_same_mailbox(primary, standby, user)
    finally:
        for session in (*p_sessions.values(), *s_sessions.values()):
            session.close()
        src.dispose()
        dst.dispose()
