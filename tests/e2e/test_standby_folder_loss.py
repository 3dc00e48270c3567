"""A standby copy that loses folders behind the gateways' back — empty ones included, at any moment
relative to replay — is found and resynchronised until it has every folder the primary has.

In one process against a real Dovecot pair: the source's capture and shipper, the recovery
gateway's receiver and replay passes (``ReplayPass``: check, replay, answer, view refresh), and
the source's answer to a resync request (a resync of the mailbox, as the source gateway does on
its next cycle). A wipe can thus land at a precise point of a pass: between two commands of
the replayer on the standby (the replayer's connection is kicked by the wipe and opened again)."""
from __future__ import annotations

import contextlib
import shutil

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.api import ingest_router
from mailrepl.recovery.replay_pass import ReplayPass
from mailrepl.recovery.settings import BoundSource
from mailrepl.recovery.source_access import SourceAccess
from mailrepl.recovery.standby_check import ResyncRequests
from mailrepl.recovery.standby_view import StandbyView
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.engines.receiver import Receiver
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.engines.special_folders import AliasingAdapter, FolderAliases
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.runtime.connection_pool import PooledAdapter
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Mailbox, Replica
from sqlalchemy import select

from tests.support.canonical_compare import adapter_for, canonical_snapshot
from tests.support.mailcompare import describe_difference, snapshot

pytestmark = [pytest.mark.dovecot]

TOKEN = "t0ken"
EMPTY = "Project 3"


def message(i: int) -> bytes:
    return (f"From: s{i}@example.org\r\nSubject: loss {i}\r\nMessage-ID: <loss.{i}@example.org>\r\n\r\n"
            f"body {i}\r\n").encode()


class WipedDuringPass:
    """The replayer's standby session; right after the replayer creates ``folder`` (a folder
    create or a folder reset bringing it back), the user's whole copy is wiped on the standby —
    the wipe kicks the replayer's connection, which is opened again for the rest of the pass."""

    def __init__(self, adapter, server, user: str, folder: str) -> None:
        self.adapter, self.server, self.user, self.folder = adapter, server, user, folder
        self.inner = adapter.open(user)
        self.wiped = False

    def create_folder(self, folder, *args, **kwargs):
        self.inner.create_folder(folder, *args, **kwargs)
        if folder == self.folder and not self.wiped:
            self.wiped = True
            self.server.wipe_user(self.user)
            with contextlib.suppress(MailreplError, OSError):  # the wipe kicked it
                self.inner.close()
            self.inner = self.adapter.open(self.user)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Rig:
    def __init__(self, tmp_path, primary, standby, *, pooled: bool = False) -> None:
        self.primary, self.standby = primary, standby
        self.src = open_store(f"sqlite:///{tmp_path}/src.sqlite")
        self.src.migrate()
        self.dst = open_store(f"sqlite:///{tmp_path}/dst.sqlite")
        self.dst.migrate()
        self.capture = CaptureEngine(self.src)
        self.primary_adapter = adapter_for(primary, "primary")
        standby_adapter = adapter_for(standby, "standby")
        if pooled:  # as the recovery gateway reaches it: connections kept between passes
            standby_adapter = PooledAdapter(standby_adapter, 2)
        self.standby_adapter = AliasingAdapter(standby_adapter, FolderAliases(self.dst, "standby"))
        bodies = BodyStore(self.dst, BlobStore(tmp_path / "blobs"))
        receiver = Receiver(self.dst, bodies, lambda server: "standby")
        access = SourceAccess([BoundSource(id="hq", token=TOKEN, servers=("primary",))], lambda server: "standby",
                              {"standby": self.standby_adapter})
        app = FastAPI()
        app.include_router(ingest_router(receiver, access, 1 << 30))
        self.shipper = Shipper(self.src, "hq", TestClient(app, base_url="http://recovery"), token=TOKEN)
        self.resyncs = ResyncRequests()
        self.passes = ReplayPass(self.dst, ReplayEngine(self.dst, bodies), StandbyView(self.dst), self.resyncs)
        self.answered: set[int] = set()  # resync tokens the source has answered
        self.resynced = 0
        with self.src.tx() as s:
            mbx = Mailbox(server="primary", address="alice", protected=True, phase="seeding")
            s.add(mbx)
            s.flush()
            self.mbx_id = mbx.id

    def rid(self) -> int:
        with self.dst.read() as s:
            return s.scalar(select(Replica.id).where(Replica.address == "alice"))

    def sync(self, standby_session=None) -> None:
        """One capture cycle, everything shipped, one replay pass, and the source's answer to a
        resync request (the mailbox resynced, as the source gateway does on its next cycle)."""
        session = self.primary_adapter.open("alice")
        try:
            self.capture.cycle(self.mbx_id, session)
        finally:
            session.close()
        while self.shipper.ship_once():
            pass
        rid = self.rid()
        if rid is not None:
            session = standby_session or self.standby_adapter.open("alice")
            try:
                self.passes.run(rid, session)
            finally:
                session.close()
        self.shipper.poll_progress()
        for want in self.resyncs.for_source("hq"):
            if want["token"] not in self.answered:
                self.answered.add(want["token"])
                self.resynced += 1
                self.capture.resync(self.mbx_id)

    def difference(self) -> str:
        return describe_difference(snapshot(self.primary, "alice"), snapshot(self.standby, "alice"),
                                   "primary", "standby")

    def sync_until_equal(self, rounds: int = 6) -> None:
        diff = ""
        for _ in range(rounds):
            self.sync()
            diff = self.difference()
            if not diff:
                return
        raise AssertionError(f"the standby did not become equal again:\n{diff}")


def special_uses(server) -> dict:
    return {k[0]: v for k, v in canonical_snapshot(server, "alice").items() if isinstance(k, tuple)}


@pytest.fixture
def rig(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    for i in range(4):
        primary.deliver("alice", message(i), folder="Work" if i % 2 else None)
    conn = primary.imap("alice")
    assert conn.create(f'"{EMPTY}"')[0] == "OK"
    conn.logout()
    r = Rig(tmp_path, primary, standby)
    r.sync_until_equal()
    assert snapshot(standby, "alice")[EMPTY] == {}
    return r


def test_a_folder_lost_while_a_resync_pass_runs_is_asked_for_again(rig):
    # the standby copy wiped: the next pass finds it and the source resyncs every folder
    rig.standby.wipe_user("alice")
    rig.sync()
    assert rig.resynced == 1
    # wiped again while that resync is replayed: right after its reset brought the empty folder
    # back, before its adds brought back the others (which they recreate); the request is
    # answered by that pass, and the view is rebuilt from the copy as the wipe left it
    wiping = WipedDuringPass(rig.standby_adapter, rig.standby, "alice", EMPTY)
    rig.sync(standby_session=wiping)
    assert wiping.wiped
    rig.sync_until_equal()
    assert rig.resynced == 2
    assert snapshot(rig.standby, "alice")[EMPTY] == {}
    assert special_uses(rig.standby) == special_uses(rig.primary)  # the special folders came back as such


@pytest.mark.parametrize("view_fresh", [True, False], ids=["fresh-view", "stale-view"])
def test_an_empty_folder_lost_alone_is_found_and_brought_back(rig, view_fresh):
    standby = rig.standby.imap("alice")
    assert standby.delete(f'"{EMPTY}"')[0] == "OK"  # nothing of it in the id map: it held no message
    standby.logout()
    if not view_fresh:  # e.g. a pass whose view refresh failed, or a mass-delete guard released
        with rig.dst.tx() as s:
            s.get(Replica, rig.rid()).view_seq = None
    rig.sync_until_equal()
    assert rig.resynced == 1
    assert snapshot(rig.standby, "alice")[EMPTY] == {}


def test_a_connection_that_lived_through_the_wipe_is_not_trusted_again(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    primary.deliver("alice", message(1))
    conn = primary.imap("alice")
    assert conn.create(f'"{EMPTY}"')[0] == "OK"
    conn.logout()
    rig = Rig(tmp_path, primary, standby, pooled=True)
    rig.sync_until_equal()
    # wiped while the replayer's pooled connection stays logged in (it logged in between the
    # kick and the removal): that server process goes on listing the copy as it last saw it
    # (Dovecot: its index files removed under it) and does not list what it creates itself, so
    # every check through it would find the empty folder missing and every resync through it
    # would create it without seeing it
    shutil.rmtree(standby.base / "mail" / "alice")
    rig.sync_until_equal()
    for _ in range(3):  # and it stays so: no resync asked for again
        rig.sync()
    assert rig.resynced == 1, rig.resynced
    assert not rig.difference()
