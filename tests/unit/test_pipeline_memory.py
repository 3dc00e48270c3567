"""Capture -> outbox -> wire -> receiver -> replay, in one process against in-memory servers.

Exercises the engines' ordering, move/replace detection, idempotency and crash recovery
quickly; the same scenarios run against real Dovecot servers in tests/e2e.
"""
from __future__ import annotations

import hashlib
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.api import ingest_router
from mailrepl.recovery.settings import BoundSource
from mailrepl.recovery.source_access import SourceAccess
from mailrepl.shared.engines.receiver import Receiver
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.errors import ServerUnavailable
from mailrepl.shared.model import Change, Kind, SeqRange
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import IdMapEntry, InboxRow, Mailbox, RejectedMessage, Replica
from mailrepl.shared.protocol.wire import Batch, Segment, decode_batch, encode_batch
from tests.unit.memory_server import Folder, MemoryAdapter, MemoryServer

TOKEN = "t0ken"


def source_access(standby, token: str = TOKEN) -> SourceAccess:
    """Source "hq", recognised by ``token``, may send every mailbox of "primary" into ``standby``."""
    return SourceAccess([BoundSource(id="hq", token=token, servers=("primary",))], lambda server: "standby",
                        {"standby": standby})


def snapshot(server: MemoryServer, user: str) -> dict[str, Counter]:
    return {
        name: Counter(
            (hashlib.sha256(m.body).hexdigest(), frozenset(m.flags), int(m.date.timestamp())) for m in f.msgs.values()
        )
        for name, f in server.box(user).items()
    }


class Pipeline:
    def __init__(self, tmp_path, *, guids=True, folder_ids=True, chunk=3):
        self.primary = MemoryServer(["alice", "bob"], guids=guids, folder_ids=folder_ids)
        self.standby = MemoryServer(["alice", "bob"])
        self.src = open_store(f"sqlite:///{tmp_path}/src.sqlite")
        self.src.migrate()
        self.dst = open_store(f"sqlite:///{tmp_path}/dst.sqlite")
        self.dst.migrate()
        self.capture = CaptureEngine(self.src, chunk_messages=chunk)
        self.blobs = BlobStore(tmp_path / "blobs")
        self.bodies = BodyStore(self.dst, self.blobs)
        self.receiver = Receiver(self.dst, self.bodies, lambda server: "standby")
        app = FastAPI()
        app.include_router(ingest_router(self.receiver, source_access(MemoryAdapter("standby", self.standby)),
                                         1 << 30))
        self.client = TestClient(app, base_url="http://recovery")
        self.shipper = Shipper(self.src, "hq", self.client, token=TOKEN, max_changes=7)
        self.replay = ReplayEngine(self.dst, self.bodies, append_batch=4)
        with self.src.tx() as s:
            s.add(Mailbox(server="primary", address="alice", protected=True, phase="seeding"))

    def mailbox(self) -> Mailbox:
        with self.src.tx() as s:
            return s.scalar(select(Mailbox).where(Mailbox.address == "alice"))

    def sync(self):
        mid = self.mailbox().id
        self.capture.cycle(mid, self.primary.open("alice"))
        while self.shipper.ship_once():
            pass
        with self.dst.tx() as s:
            rid = s.scalar(select(Replica.id).where(Replica.address == "alice"))
        if rid is not None:
            self.replay.replay(rid, self.standby.open("alice"))
        self.shipper.poll_progress()

    def assert_equal(self):
        assert snapshot(self.primary, "alice") == snapshot(self.standby, "alice")


def _msg(i: int, size: int = 100) -> bytes:
    return f"Subject: m{i}\r\nMessage-ID: <{i}@x>\r\n\r\n".encode() + bytes([65 + i % 26]) * size + b"\r\n"


def test_seed_then_every_kind_of_change(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(10):
        p.primary.deliver("alice", _msg(i), flags={"\\Seen"} if i % 2 else set())
    for i in range(10, 15):
        p.primary.deliver("alice", _msg(i), folder="Archive")
    p.primary.deliver("bob", _msg(99))  # not protected
    p.sync()
    p.assert_equal()
    mbx = p.mailbox()
    assert mbx.phase == "replicating" and mbx.seed_msgs_done == 15 and mbx.seed_msgs_total == 15
    assert mbx.applied_seq == mbx.last_seq
    assert "bob" not in {r for r in p.standby.boxes if len(p.standby.box(r)["INBOX"].msgs)}

    p.primary.set_flags("alice", "INBOX", 1, {"\\Flagged"})
    p.primary.set_flags("alice", "INBOX", 2, set())
    p.primary.expunge("alice", "INBOX", [3])
    p.sync()
    p.assert_equal()

    raw_before = p.shipper.stats.raw_bytes
    p.primary.move("alice", "INBOX", 4, "Archive")
    p.sync()
    p.assert_equal()
    assert p.shipper.stats.raw_bytes == raw_before, "a move must not ship the body again"

    box = p.primary.box("alice")
    box["Projects"] = box.pop("Archive")  # rename keeps the folder id
    box["Projects"].name = "Projects"
    p.primary.deliver("alice", _msg(50), folder="Projects/2024")
    p.sync()
    p.assert_equal()
    p.primary.box("alice").pop("Projects/2024")
    p.sync()
    p.assert_equal()


def test_draft_replace_is_one_change(tmp_path):
    p = Pipeline(tmp_path)
    uid = p.primary.deliver("alice", b"Subject: draft v1\r\n\r\nhello\r\n", folder="Drafts", flags={"\\Draft"})
    p.sync()
    p.primary.deliver("alice", b"Subject: draft v2\r\n\r\nhello world\r\n", folder="Drafts", flags={"\\Draft"})
    p.primary.expunge("alice", "Drafts", [uid])
    p.sync()
    p.assert_equal()
    with p.dst.tx() as s:
        kinds = [Change.from_dict(__import__("json").loads(r.change)).kind for r in s.scalars(select(InboxRow))]
    assert kinds.count(Kind.MSG_REPLACE) == 1 and Kind.MSG_EXPUNGE not in kinds


def test_uidvalidity_change_resyncs_without_duplicates(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(6):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    appends = p.standby.appends
    p.primary.reset_uidvalidity("alice", "INBOX")
    p.primary.deliver("alice", _msg(77))
    p.sync()
    p.assert_equal()
    assert p.standby.appends == appends + 1, "only the new message is written; the rest are kept"


def test_a_reset_folder_whose_messages_come_back_with_new_dates_is_copied_exactly(tmp_path):
    """The folder deleted and created again, the same messages appended back, some with new
    internal dates and flags: a copy is kept only where it matches in everything (flags are set
    on it); a message whose date changed is written again and the old copy removed."""
    from datetime import datetime, timezone

    p = Pipeline(tmp_path)
    for i in range(4):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    appends = p.standby.appends
    p.primary.reset_uidvalidity("alice", "INBOX")
    msgs = sorted(p.primary.box("alice")["INBOX"].msgs.values(), key=lambda m: m.uid)
    for m in msgs[:2]:  # re-appended later: new internal dates
        m.date = datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)
    msgs[3].flags = {"\\Flagged"}
    p.sync()
    p.assert_equal()  # bytes, flags and internal dates, per folder
    assert p.standby.appends == appends + 2, "only the two re-dated messages are written again"
    assert len(p.standby.box("alice")["INBOX"].msgs) == 4


def test_moves_detected_by_content_hash_without_guids(tmp_path):
    p = Pipeline(tmp_path, guids=False, folder_ids=False)
    for i in range(4):
        p.primary.deliver("alice", _msg(i, 5000))
    p.sync()
    raw = p.shipper.stats.raw_bytes
    p.primary.move("alice", "INBOX", 2, "Archive")
    p.sync()
    p.assert_equal()
    assert p.shipper.stats.raw_bytes == raw


def test_crash_after_standby_stored_append_does_not_duplicate(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(5):
        p.primary.deliver("alice", _msg(i))
    p.standby.fail_after_append = True
    with pytest.raises(ServerUnavailable):
        p.sync()
    # a new engine (process restart) recovers the id map from the server instead of re-appending
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4)
    p.sync()
    p.assert_equal()
    assert sum(len(f.msgs) for f in p.standby.box("alice").values()) == 5


def test_a_standby_that_alters_messages_is_reported_and_a_crash_writes_nothing_twice(tmp_path):
    from mailrepl.shared.content.standby_copy import munge_8bit_headers
    from mailrepl.shared.store.models import AlteredMessage

    p = Pipeline(tmp_path)
    p.standby.alter = munge_8bit_headers  # as Cyrus's munge8bit
    eight = [f"Subject: H\u00c4NSCHEL {i}\r\nMessage-ID: <h{i}@x>\r\n\r\nK\u00f6rper\r\n".encode() for i in range(5)]
    for body in eight[:3] + [_msg(9)]:
        p.primary.deliver("alice", body)
    p.sync()
    with p.dst.read() as s:
        altered = list(s.scalars(select(AlteredMessage).order_by(AlteredMessage.seq)))
    assert [a.message_id for a in altered] == ["<h0@x>", "<h1@x>", "<h2@x>"]
    assert all(a.what == "8-bit header bytes rewritten" and a.sent_size == a.stored_size for a in altered)
    held = {hashlib.sha256(m.body).hexdigest() for m in p.standby.box("alice")["INBOX"].msgs.values()}
    assert {a.standby_sha256 for a in altered} <= held and not {a.sha256 for a in altered} & held
    # the standby stores the next ones, then the connection (the process) dies before the id map
    for body in eight[3:]:
        p.primary.deliver("alice", body)
    p.standby.fail_after_append = True
    with pytest.raises(ServerUnavailable):
        p.sync()
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4)
    p.sync()
    assert len(p.standby.box("alice")["INBOX"].msgs) == 6, "an altered message was written twice"


def test_crash_in_the_middle_of_a_move_on_the_standby_leaves_one_copy(tmp_path, monkeypatch):
    """A move is a copy and an expunge (Dovecot's MOVE too): a standby killed between them holds the
    message in both folders. Recovery keeps the copy in the target folder and removes the original."""
    p = Pipeline(tmp_path)
    for i in range(4):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    M = p.primary.open("alice")
    M.move("INBOX", [1, 2], "Archive")
    server = p.standby

    def copy_then_die(user, folder, uid, dest):
        m = server.boxes[user][folder].msgs[uid]
        server._add(server.boxes[user].setdefault(dest, Folder(dest)), m.body, m.flags, m.date, m.guid)
        raise ServerUnavailable("standby killed between the copy and the expunge")

    monkeypatch.setattr(server, "move", copy_then_die)
    with pytest.raises(ServerUnavailable):
        p.sync()
    monkeypatch.undo()
    assert sum(len(f.msgs) for f in p.standby.box("alice").values()) == 5  # one message in both folders
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4)  # the restarted recovery gateway
    p.sync()
    p.assert_equal()
    assert sum(len(f.msgs) for f in p.standby.box("alice").values()) == 4


def test_rejected_message_is_reported_and_does_not_stop_the_rest(tmp_path):
    p = Pipeline(tmp_path)
    bad = _msg(3)
    p.standby.reject.add(bad)
    for i in range(6):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    with p.dst.tx() as s:
        rej = list(s.scalars(select(RejectedMessage)))
    assert len(rej) == 1 and rej[0].folder == "INBOX"
    assert len(p.standby.box("alice")["INBOX"].msgs) == 5
    mbx = p.mailbox()
    assert mbx.applied_seq == mbx.last_seq and '"folder": "INBOX"' in mbx.rejected
    p.primary.set_flags("alice", "INBOX", 4, {"\\Seen"})  # a change to the rejected one is harmless
    p.primary.set_flags("alice", "INBOX", 5, {"\\Seen"})
    p.sync()
    by_body = {m.body: m for m in p.standby.box("alice")["INBOX"].msgs.values()}
    assert by_body[_msg(4)].flags == {"\\Seen"} and bad not in by_body


def test_redelivered_batch_is_a_noop_and_different_content_is_a_conflict(tmp_path):
    p = Pipeline(tmp_path)
    p.primary.deliver("alice", _msg(1))
    mid = p.mailbox().id
    p.capture.cycle(mid, p.primary.open("alice"))
    batch = p.shipper.build_batch().batch
    data = encode_batch(batch)
    hdr = {"Content-Type": "application/vnd.mailrepl.batch", "Authorization": f"Bearer {TOKEN}"}
    r1 = p.client.post("/api/v1/ingest/batches", content=data, headers=hdr).json()
    r2 = p.client.post("/api/v1/ingest/batches", content=data, headers=hdr).json()
    assert r1["results"][0]["status"] == r2["results"][0]["status"] == "ok"
    with p.dst.tx() as s:
        assert len(list(s.scalars(select(InboxRow)))) == len(batch.segments[0].changes)
    seg = batch.segments[0]
    forged = list(seg.changes)
    forged[-1] = Change(Kind.MSG_FLAGS, "INBOX", mid=1, flags=("\\Seen",))
    bad = Batch(batch.source, (Segment(seg.server, seg.address, seg.range, tuple(forged)),), batch.messages, batch.parts)
    r3 = p.client.post("/api/v1/ingest/batches", content=encode_batch(bad), headers=hdr).json()
    assert r3["results"][0]["status"] == "conflict"
    # a batch that starts past what is held is a gap, nothing stored
    gap = Batch(batch.source, (Segment(seg.server, seg.address, SeqRange(50, 50), (forged[-1],)),))
    r4 = p.client.post("/api/v1/ingest/batches", content=encode_batch(gap), headers=hdr).json()
    assert r4["results"][0]["status"] == "gap" and r4["results"][0]["resend_from"] == len(seg.changes) + 1
    assert decode_batch(data).segments[0].range == seg.range


def test_ingest_requires_the_token_and_rejects_garbage(tmp_path):
    p = Pipeline(tmp_path)
    assert p.client.post("/api/v1/ingest/batches", content=b"x").status_code == 401
    r = p.client.post(
        "/api/v1/ingest/batches", content=b"MRPL\x09\x01zzz",
        headers={"Content-Type": "application/vnd.mailrepl.batch", "Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 400 and "version 9" in r.json()["detail"]


def test_unreachable_peer_keeps_everything_and_resumes(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(5):
        p.primary.deliver("alice", _msg(i))
    def down(request):
        raise httpx.ConnectError("refused")
    p.shipper.client = httpx.Client(transport=httpx.MockTransport(down), base_url="http://recovery")
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    with pytest.raises(Exception):
        p.shipper.ship_once()
    assert p.mailbox().acked_seq == 0 and p.mailbox().last_seq > 0
    p.shipper.client = p.client
    p.sync()
    p.assert_equal()


def test_pipelined_shipping_sends_every_batch_in_order(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(40):
        p.primary.deliver("alice", _msg(i), folder="Archive" if i % 3 == 0 else "INBOX")
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    last = p.mailbox().last_seq
    sent = p.shipper.ship_pipelined()
    assert sent == -(-last // 7), "one batch per 7 changes (max_changes), each prepared while the previous flew"
    assert p.mailbox().acked_seq == last and p.mailbox().ship_error is None
    with p.dst.tx() as s:
        rep = s.scalar(select(Replica).where(Replica.address == "alice"))
        seqs = list(s.scalars(select(InboxRow.seq).where(InboxRow.replica_id == rep.id).order_by(InboxRow.seq)))
    assert seqs == list(range(1, last + 1)) and rep.error is None
    p.sync()
    p.assert_equal()


def test_pipelined_shipping_stops_at_a_failure_and_resumes_from_the_acknowledgement(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(30):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    posts = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/batches"):
            posts.append(request)
            if len(posts) == 3:
                raise httpx.ConnectError("link down")
        r = p.client.post(request.url.path, content=request.content, headers=dict(request.headers))
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    p.shipper.client = httpx.Client(transport=httpx.MockTransport(flaky), base_url="http://recovery")
    with pytest.raises(Exception, match="link down"):
        p.shipper.ship_pipelined()
    assert p.mailbox().acked_seq == 14, "the two batches before the failure are acknowledged, nothing more"
    p.shipper.client = p.client
    p.sync()
    p.assert_equal()
    with p.dst.tx() as s:
        rep = s.scalar(select(Replica).where(Replica.address == "alice"))
        assert rep.received_seq == p.mailbox().last_seq and rep.error is None


@pytest.mark.parametrize("keep", [False, True])
def test_folder_delete_keeps_messages_the_id_map_does_not_know_only_when_asked(tmp_path, keep):
    p = Pipeline(tmp_path)
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4, keep_unknown=keep)
    for i in range(3):
        p.primary.deliver("alice", _msg(i), folder="Projects")
    p.primary.deliver("alice", _msg(3), folder="Projects/2024")
    p.primary.deliver("alice", _msg(4), folder="Old")
    p.primary.deliver("alice", _msg(5), folder="Old/2023")
    p.sync()
    p.assert_equal()
    p.standby.deliver("alice", _msg(9), folder="Projects/2024")  # never replicated: the id map does not know it
    p.primary.delete_folder("alice", "Projects")
    p.primary.delete_folder("alice", "Old")
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    while p.shipper.ship_once():
        pass
    with p.dst.read() as s:
        rid = s.scalar(select(Replica.id).where(Replica.address == "alice"))
    report = p.replay.replay(rid, p.standby.open("alice"))
    left = snapshot(p.standby, "alice")
    assert "Old" not in left and "Old/2023" not in left  # nothing unknown in them: deleted either way
    if not keep:  # a standby mirrors deletes exactly
        assert "Projects" not in left and "Projects/2024" not in left and report.kept_folders == []
        return
    # the unknown message keeps its folder, whose known messages go; the parent stays for its child
    assert [m.body for m in p.standby.box("alice")["Projects/2024"].msgs.values()] == [_msg(9)]
    assert left["Projects"] == Counter()
    assert report.kept_folders == [dict(folder="Projects/2024", messages=1),
                                   dict(folder="Projects", messages=0, subfolders=["Projects/2024"])]
    with p.dst.read() as s:
        assert not s.scalars(select(IdMapEntry).where(IdMapEntry.folder.like("Projects%"))).all()


def test_a_parent_deleted_alone_on_the_primary_leaves_its_subfolders_on_the_standby(tmp_path):
    """RFC 3501 lets a server delete a folder whose subfolders stay: the standby deletes that
    folder, keeps the subfolders with their messages, and its folder record still names them."""
    from mailrepl.shared.capture_state.replica_folders import ReplicaFolders

    p = Pipeline(tmp_path)
    for i in range(3):
        p.primary.deliver("alice", _msg(i), folder="Projects")
    p.primary.deliver("alice", _msg(3), folder="Projects/2024")
    p.primary.deliver("alice", _msg(4), folder="Projects/2024/Q1")
    p.primary.open("alice").create_folder("Projects/Empty")
    p.sync()
    p.assert_equal()
    p.primary.delete_folder("alice", "Projects", subfolders=False)
    p.sync()
    p.assert_equal()
    left = snapshot(p.standby, "alice")
    assert "Projects" not in left
    assert sum(left["Projects/2024"].values()) == 1 and sum(left["Projects/2024/Q1"].values()) == 1
    assert "Projects/Empty" in left
    with p.dst.read() as s:
        rid = s.scalar(select(Replica.id).where(Replica.address == "alice"))
        names = ReplicaFolders(s, rid).names()
        assert {"Projects/2024", "Projects/2024/Q1", "Projects/Empty"} <= names and "Projects" not in names
        assert len(s.scalars(select(IdMapEntry).where(IdMapEntry.folder.like("Projects/2024%"))).all()) == 2


def test_a_mailbox_the_standby_lacks_is_set_aside_and_the_others_keep_replicating(tmp_path):
    """The recovery gateway refuses a batch naming a mailbox its standby does not have, with no
    state change; the source sets that mailbox aside (its error says why) and ships the others;
    once the standby has it, the next retry replicates it."""
    from mailrepl.gateway.shipper import REFUSED_PREFIX
    from tests.unit.memory_server import Folder

    p = Pipeline(tmp_path)
    p.primary.boxes["carol"] = {"INBOX": Folder("INBOX")}  # on the primary only
    for i in range(3):
        p.primary.deliver("alice", _msg(i))
        p.primary.deliver("carol", _msg(10 + i))
    with p.src.tx() as s:
        s.add(Mailbox(server="primary", address="carol", protected=True, phase="seeding"))
        ids = {m.address: m.id for m in s.scalars(select(Mailbox))}
    for address in ("alice", "carol"):
        p.capture.cycle(ids[address], p.primary.open(address))
    while p.shipper.ship_once():
        pass
    with p.src.read() as s:
        carol, alice = (s.get(Mailbox, ids[a]) for a in ("carol", "alice"))
        assert carol.ship_error.startswith(REFUSED_PREFIX) and "has no mailbox 'carol'" in carol.ship_error
        assert carol.acked_seq == 0 and alice.ship_error is None and alice.acked_seq == alice.last_seq
    with p.dst.read() as s:  # nothing of carol at DR
        assert s.scalar(select(Replica.id).where(Replica.address == "carol")) is None
    p.sync()
    p.assert_equal()  # alice replicated although carol's batches were refused
    # the admin creates carol on the standby: the periodic retry ships her
    p.standby.boxes["carol"] = {"INBOX": Folder("INBOX")}
    assert p.shipper.release_refused() == 1
    import mailrepl.recovery.source_access as access_module
    access_module.NEGATIVE_TTL, saved = 0.0, access_module.NEGATIVE_TTL  # the gateway asks the standby again
    try:
        while p.shipper.ship_once():
            pass
    finally:
        access_module.NEGATIVE_TTL = saved
    with p.src.read() as s:
        carol = s.get(Mailbox, ids["carol"])
        assert carol.ship_error is None and carol.acked_seq == carol.last_seq > 0


def test_a_message_too_large_for_the_recovery_gateway_sets_its_mailbox_aside(tmp_path):
    """A batch that cannot be made smaller (one mailbox, its next message) over the recovery
    gateway's limit: that mailbox is set aside with the reason, the others replicate."""
    import os

    from mailrepl.gateway.shipper import REFUSED_PREFIX

    p = Pipeline(tmp_path)
    app = FastAPI()
    app.include_router(ingest_router(p.receiver, source_access(MemoryAdapter("standby", p.standby)), 16 * 1024))
    p.shipper.peer = p.shipper.peer.over(TestClient(app, base_url="http://recovery"))
    p.primary.deliver("alice", b"Subject: big\r\n\r\n" + os.urandom(64 * 1024).hex().encode() + b"\r\n")
    p.primary.deliver("bob", _msg(1))
    with p.src.tx() as s:
        s.add(Mailbox(server="primary", address="bob", protected=True, phase="seeding"))
        ids = {m.address: m.id for m in s.scalars(select(Mailbox))}
    for address in ("alice", "bob"):
        p.capture.cycle(ids[address], p.primary.open(address))
    while p.shipper.ship_once():
        pass
    with p.src.read() as s:
        alice, bob = (s.get(Mailbox, ids[a]) for a in ("alice", "bob"))
        assert alice.ship_error.startswith(REFUSED_PREFIX) and "over the recovery gateway's limit" in alice.ship_error
        assert alice.acked_seq < alice.last_seq  # what came before the big message went through
        assert bob.ship_error is None and bob.acked_seq == bob.last_seq > 0
    assert p.shipper.builder.max_bytes == p.shipper.max_bytes  # full-size batches again


def test_a_resync_into_a_folder_recreated_with_its_old_uidvalidity_keeps_what_it_writes(tmp_path):
    """A folder wiped on the standby and created again with the UIDVALIDITY it had before (a server
    that derives it from the clock, its record of used values wiped too): its UIDs start again at 1,
    so the id map's old entries name UIDs of new messages. The resync must end with the standby
    equal: the end of the reset removes only copies nobody wrote, never one the replayer just
    wrote or kept."""
    p = Pipeline(tmp_path)
    for i in range(3):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    p.assert_equal()
    old = p.standby.box("alice")["INBOX"]
    p.standby.boxes["alice"]["INBOX"] = Folder("INBOX", uidvalidity=old.uidvalidity)  # wiped, same UIDVALIDITY
    p.primary.deliver("alice", _msg(9))
    p.sync()  # written at UID 1 of the new folder, a UID the id map gave to another message too
    p.capture.resync(p.mailbox().id)
    p.sync()
    p.sync()
    p.assert_equal()
    assert len(p.standby.box("alice")["INBOX"].msgs) == 4


def test_a_prepared_batch_keeps_its_bodies_only_in_the_encoded_bytes(tmp_path):
    # memory: the batch in flight and the one prepared meanwhile are each held once, encoded
    p = Pipeline(tmp_path)
    attachment = bytes(range(256)) * 200  # one part above the split threshold
    body = (b'Subject: a\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\ntext\r\n--b\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + attachment + b"\r\n--b--\r\n")
    p.primary.deliver("alice", body)
    p.primary.deliver("alice", _msg(2))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    built, data = p.shipper._prepare({}, frozenset())
    sent = decode_batch(data)
    assert sent.parts and set(built.batch.parts) == set(sent.parts)  # keys still there (parts in flight)
    assert set(built.batch.messages) == set(sent.messages)
    assert not any(built.batch.messages.values()) and not any(built.batch.parts.values())
    assert built.batch.segments == sent.segments
    assert hashlib.sha256(body).hexdigest() in sent.messages


def test_capture_streams_several_chunks_from_one_fetch_and_commits_each(tmp_path):
    # each chunk commits on its own (bounded memory, progress kept), yet the messages come from
    # one fetch of the pending UIDs: nothing fetched is thrown away and fetched again
    p = Pipeline(tmp_path, chunk=3)
    for i in range(10):
        p.primary.deliver("alice", _msg(i))
    session = p.primary.open("alice")
    asked: list[list[int]] = []
    fetched: list[int] = []
    real = session.fetch

    def fetch(folder, uids):
        asked.append(list(uids))
        for msg in real(folder, uids):
            fetched.append(msg.uid)
            yield msg

    session.fetch = fetch
    commits: list[int] = []
    real_commit = p.capture._commit_chunk

    def commit(mailbox_id, folder_id, batch, remaining, replace, report):
        commits.append(len(batch))
        real_commit(mailbox_id, folder_id, batch, remaining, replace, report)

    p.capture._commit_chunk = commit
    report = p.capture.cycle(p.mailbox().id, session)
    assert report.messages == 10 and len(asked) == 1 and sorted(fetched) == fetched and len(fetched) == 10
    assert commits == [3, 3, 3, 1]
    while p.shipper.ship_once():
        pass
    with p.dst.tx() as s:
        rid = s.scalar(select(Replica.id).where(Replica.address == "alice"))
    p.replay.replay(rid, p.standby.open("alice"))
    p.assert_equal()


def test_progress_reports_each_replicas_own_rejected_messages_in_order(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/dr.sqlite")
    store.migrate()
    with store.tx() as s:
        reps = [Replica(source_id=src, server="primary", address=addr, target="standby", received_seq=5, applied_seq=5)
                for src, addr in (("hq", "alice"), ("hq", "bob"), ("hq", "carol"), ("branch", "alice"))]
        s.add_all(reps)
        s.flush()
        alice, bob, _, other = (r.id for r in reps)
        for rid, seq, folder in ((bob, 4, "Work"), (alice, 3, "INBOX"), (bob, 2, "INBOX"), (other, 1, "Elsewhere")):
            s.add(RejectedMessage(replica_id=rid, seq=seq, folder=folder, reason=f"refused {seq}",
                                  subject="s" if seq == 4 else None))
    ack = Receiver(store, BodyStore(store, BlobStore(tmp_path / "blobs")), lambda server: "standby").progress("hq")
    by_address = {r.address: r.rejected for r in ack.results}
    assert by_address == {
        "alice": ({"seq": 3, "folder": "INBOX", "reason": "refused 3"},),
        "bob": ({"seq": 2, "folder": "INBOX", "reason": "refused 2"},
                {"seq": 4, "folder": "Work", "reason": "refused 4", "subject": "s"}),
        "carol": (),
    }
    assert all(r.status == "ok" and r.acked == 5 and r.applied == 5 for r in ack.results)
