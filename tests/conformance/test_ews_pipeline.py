"""Capture -> wire -> replay with Exchange (the EWS adapter against the protocol-shape responder)
on either side: Exchange primary -> in-memory IMAP-like standby, and in-memory primary ->
Exchange standby. The engines run in one process; every EWS request is real HTTP through
exchangelib. Folder resyncs after an expired sync state must not duplicate anything."""
from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.api import ingest_router
from mailrepl.shared.engines.receiver import Receiver
from mailrepl.shared.adapters.ews import EwsAdapter, EwsEndpoint
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.errors import ServerUnavailable
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import FolderState, Mailbox, Replica
from tests.support.ews_responder import SERVICE_PASSWORD, SERVICE_USER, EwsResponder
from tests.unit.memory_server import MemoryAdapter, MemoryServer
from tests.unit.test_pipeline_memory import source_access

ALICE = "alice@example.org"
TOKEN = "t0ken"
DATE = datetime(2024, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def _msg(i: int, size: int = 200) -> bytes:
    return f"Subject: m{i}\r\nMessage-ID: <{i}@ews-pipeline>\r\n\r\n".encode() + bytes([65 + i % 26]) * size + b"\r\n"


def _key(body: bytes, flags, date) -> tuple:
    return hashlib.sha256(body).hexdigest(), frozenset(flags), int(date.timestamp())


class EwsSide:
    def __init__(self) -> None:
        self.responder = EwsResponder([ALICE, "bob@example.org"]).start()
        self.box = self.responder.store.mailbox(ALICE)
        self.adapter = EwsAdapter("ews", EwsEndpoint(self.responder.endpoint, SERVICE_USER, SERVICE_PASSWORD,
                                                     timeout=10.0, max_wait=5.0, page_size=4, max_changes=1000))

    def open(self):
        return self.adapter.open(ALICE)

    def snapshot(self) -> dict[str, Counter]:
        s = self.open()
        out = {}
        for f in s.list_folders():
            if f.messages:
                uids = [m.uid for m in s.changes_since(f.name, None).new]
                out[f.name] = Counter(_key(m.body, m.flags, m.internaldate) for m in s.fetch(f.name, uids))
        return out

    def stop(self) -> None:
        self.responder.stop()


class MemorySide:
    def __init__(self) -> None:
        self.server = MemoryServer([ALICE])
        self.appends_seen = 0

    def open(self):
        return self.server.open(ALICE)

    def snapshot(self) -> dict[str, Counter]:
        return {name: Counter(_key(m.body, m.flags, m.date) for m in f.msgs.values())
                for name, f in self.server.box(ALICE).items() if f.msgs}

    def stop(self) -> None:
        pass


class Pipeline:
    def __init__(self, tmp_path, primary, standby, states: tuple[str, str] | None = None) -> None:
        self.primary, self.standby = primary, standby
        src_url, dst_url = states or (f"sqlite:///{tmp_path}/src.sqlite", f"sqlite:///{tmp_path}/dst.sqlite")
        self.src = open_store(src_url)
        self.src.migrate()
        self.dst = open_store(dst_url)
        self.dst.migrate()
        self.capture = CaptureEngine(self.src, chunk_messages=3)
        self.bodies = BodyStore(self.dst, BlobStore(tmp_path / "blobs"))
        receiver = Receiver(self.dst, self.bodies, lambda server: "standby")
        app = FastAPI()
        standby_adapter = standby.adapter if isinstance(standby, EwsSide) else MemoryAdapter("standby", standby.server)
        app.include_router(ingest_router(receiver, source_access(standby_adapter, TOKEN), 1 << 30))
        self.shipper = Shipper(self.src, "hq", TestClient(app, base_url="http://recovery"), token=TOKEN, max_changes=7)
        self.replay = ReplayEngine(self.dst, self.bodies, append_batch=4)
        with self.src.tx() as s:
            s.add(Mailbox(server="primary", address=ALICE, protected=True, phase="seeding"))

    def sync(self) -> None:
        with self.src.tx() as s:
            mid = s.scalar(select(Mailbox.id).where(Mailbox.address == ALICE))
        self.capture.cycle(mid, self.primary.open())
        while self.shipper.ship_once():
            pass
        with self.dst.tx() as s:
            rid = s.scalar(select(Replica.id).where(Replica.address == ALICE))
        if rid is not None:
            self.replay.replay(rid, self.standby.open())
        self.shipper.poll_progress()

    def assert_equal(self) -> None:
        assert self.primary.snapshot() == self.standby.snapshot()


@pytest.fixture
def ews_to_memory(tmp_path, gateway_states):
    # on PostgreSQL too: cursors carrying sync states are longer than IMAP's (migration 0004)
    p = Pipeline(tmp_path, EwsSide(), MemorySide(), gateway_states)
    yield p
    p.primary.stop()
    p.src.dispose()
    p.dst.dispose()


@pytest.fixture
def memory_to_ews(tmp_path):
    p = Pipeline(tmp_path, MemorySide(), EwsSide())
    yield p
    p.standby.stop()


def test_exchange_primary_every_kind_of_change(ews_to_memory):
    p = ews_to_memory
    box = p.primary.box
    items = [box.deliver("INBOX", _msg(i), is_read=bool(i % 2), flagged=i == 4, received=DATE) for i in range(10)]
    for i in range(10, 14):
        box.deliver("Archive", _msg(i), categories=["Project"], received=DATE)
    p.sync()
    p.assert_equal()
    assert set(p.standby.snapshot()) == {"INBOX", "Archive"}

    box.set_read(items[0].id, True)
    box.set_flagged(items[1].id, True)
    box.delete_item(items[2].id)
    p.sync()
    p.assert_equal()

    raw = p.shipper.stats.raw_bytes
    box.move_item(items[3].id, box.path("Archive").id)
    p.sync()
    p.assert_equal()
    assert p.shipper.stats.raw_bytes == raw, "a move must not ship the body again"

    archive = box.path("Archive")
    box.update_folder(archive.id, name="Projects")
    box.deliver("Projects/2024", _msg(50), received=DATE)
    p.sync()
    p.assert_equal()
    assert "Projects/2024" in p.standby.server.box(ALICE) and "Archive" not in p.standby.server.box(ALICE)
    box.delete_folder(box.path("Projects/2024").id)
    p.sync()
    p.assert_equal()
    assert "Projects/2024" not in p.standby.server.box(ALICE)


def test_exchange_primary_expired_sync_state_resyncs_without_duplicates(ews_to_memory):
    p = ews_to_memory
    for i in range(6):
        p.primary.box.deliver("INBOX", _msg(i), received=DATE)
    p.sync()
    with p.src.tx() as s:
        cursors = list(s.scalars(select(FolderState.cursor).where(FolderState.cursor.is_not(None))))
    assert cursors and all(len(c) > 100 and "#" in c for c in cursors)  # sync states kept whole
    appends = p.standby.server.appends
    p.primary.responder.store.forget_sync_states()
    p.primary.box.deliver("INBOX", _msg(77), received=DATE)
    p.sync()
    p.assert_equal()
    assert p.standby.server.appends == appends + 1, "only the new message is written; the rest are kept"


def test_exchange_standby_every_kind_of_change(memory_to_ews):
    p = memory_to_ews
    prim = p.primary.server
    for i in range(8):
        prim.deliver(ALICE, _msg(i), flags={"\\Seen"} if i % 2 else {"$Project"}, date=DATE)
    for i in range(8, 11):
        prim.deliver(ALICE, _msg(i), folder="Archive", flags={"\\Flagged", "\\Answered"}, date=DATE)
    p.sync()
    p.assert_equal()

    prim.set_flags(ALICE, "INBOX", 1, {"\\Flagged"})
    prim.set_flags(ALICE, "INBOX", 2, set())
    prim.expunge(ALICE, "INBOX", [3])
    p.sync()
    p.assert_equal()

    prim.move(ALICE, "INBOX", 4, "Archive")
    p.sync()
    p.assert_equal()

    mbox = prim.box(ALICE)
    mbox["Projects"] = mbox.pop("Archive")
    mbox["Projects"].name = "Projects"
    prim.deliver(ALICE, _msg(50), folder="Projects/2024", date=DATE)
    p.sync()
    p.assert_equal()
    names = {f.name for f in p.standby.open().list_folders()}
    assert {"Projects", "Projects/2024"} <= names and "Archive" not in names
    mbox.pop("Projects/2024")
    p.sync()
    p.assert_equal()
    assert "Projects/2024" not in {f.name for f in p.standby.open().list_folders()}
    stored = [i for f in p.standby.box.folders.values() for i in f.items.values()]
    assert stored and all(not (int(i.props.get(0x0E07, "0")) & 0x8) for i in stored), "nothing left as a draft"


def test_exchange_standby_create_whose_answer_was_lost_is_not_written_twice(memory_to_ews):
    p = memory_to_ews
    for i in range(5):
        p.primary.server.deliver(ALICE, _msg(i), date=DATE)
    p.standby.responder.faults.lose_answer("CreateItem")
    with pytest.raises(ServerUnavailable):
        p.sync()
    assert sum(len(f.items) for f in p.standby.box.folders.values()) > 0  # Exchange did store them
    # a new engine (process restart) recovers the id map from the server instead of re-creating
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4)
    p.sync()
    p.assert_equal()
    assert sum(len(f.items) for f in p.standby.box.folders.values()) == 5
