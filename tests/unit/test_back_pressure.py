"""Back-pressure: the copy queue's bound and alarm levels, capture paused at the bound and
resumed when the queue drains, a full state store (real SQLite ``SQLITE_FULL``) stopping capture
cleanly, the translation of "no space" errors, and the recovery gateway's 507 refusal.

Runs the in-memory pipeline of ``test_pipeline_memory``; the same on real Dovecot servers, with
gateways as processes and real full filesystems, is in tests/e2e/test_back_pressure.py.
"""
from __future__ import annotations

import errno
import sqlite3

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError

from mailrepl.gateway.settings import load_source_settings
from mailrepl.recovery.api import ingest_router
from mailrepl.recovery.disk_guard import DiskGuard
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.engines.queue_gate import QueueGate, QueueLimits, QueueUsage, level_of
from mailrepl.shared.errors import DiskFull, PeerRefused, StoreError
from mailrepl.shared.store.diskspace import is_disk_full, sqlite_dir
from mailrepl.shared.store.models import FolderState, InboxRow, Mailbox, OutboxRow
from tests.unit.test_pipeline_memory import Pipeline, _msg, source_access
from tests.unit.test_settings import RECOVERY, SOURCE, config_error, edit, write

MB = 1 << 20


# ---------------------------------------------------------------------------- levels


@pytest.mark.parametrize("changes, size, expected", [
    (0, 0, "ok"),
    (79, 0, "ok"),
    (80, 0, "warning"),  # 80 % of the change bound
    (10, 800, "warning"),  # 80 % of the byte bound
    (99, 999, "warning"),
    (100, 0, "full"),
    (1, 1000, "full"),  # one change carrying the byte bound
    (250, 5000, "full"),
])
def test_levels_against_either_bound(changes, size, expected):
    assert level_of(QueueUsage(changes, size), 100, 1000, 0.8) == expected


def test_an_empty_queue_is_never_full():
    # bytes alone (no change queued) cannot hold capture back: nothing would ever drain it
    assert level_of(QueueUsage(0, 10**12), 1, 1, 0.8) == "ok"


# ---------------------------------------------------------------------------- settings


def test_queue_settings_defaults_and_keys(tmp_path):
    q = load_source_settings(write(tmp_path, SOURCE), {}).gateway.queue
    assert q == QueueLimits()
    assert q.mailbox_max_bytes <= q.max_bytes and q.mailbox_max_changes <= q.max_changes
    assert q.warn_ratio == 0.8 and q.min_free_bytes == 64 * MB
    text_ = edit(SOURCE, 'id = "hq"', 'id = "hq"\nqueue_max_changes = 1000\nqueue_max_bytes = 104857600\n'
                                     "queue_warn_percent = 90\nmin_free_bytes = 0")
    q = load_source_settings(write(tmp_path, text_), {}).gateway.queue
    # a per-mailbox bound not given follows a smaller gateway-wide bound
    assert (q.max_changes, q.max_bytes, q.mailbox_max_changes, q.mailbox_max_bytes) == (1000, 100 * MB, 1000, 100 * MB)
    assert q.warn_ratio == 0.9 and q.min_free_bytes == 0


@pytest.mark.parametrize("extra, expected", [
    ("queue_max_changes = 0", "gateway.queue_max_changes: expected an integer >= 1"),
    ("queue_max_bytes = 1000", f"gateway.queue_max_bytes: expected an integer >= {MB}"),
    ("queue_warn_percent = 100", "gateway.queue_warn_percent: expected an integer 1-99"),
    ("queue_warn_percent = 0.8", "gateway.queue_warn_percent: expected an integer 1-99"),
    ("min_free_bytes = -1", "gateway.min_free_bytes: expected an integer >= 0"),
    ("queue_max_changes = 10\nmailbox_queue_max_changes = 11",
     "gateway.mailbox_queue_max_changes: must be <= queue_max_changes (10), got 11"),
    ("queue_max_bytes = 2097152\nmailbox_queue_max_bytes = 3145728",
     "gateway.mailbox_queue_max_bytes: must be <= queue_max_bytes (2097152), got 3145728"),
])
def test_queue_settings_errors_name_the_key(tmp_path, extra, expected):
    path = write(tmp_path, edit(SOURCE, 'id = "hq"', f'id = "hq"\n{extra}'))
    assert config_error(load_source_settings, path).startswith(expected)


def test_recovery_free_space_floor_setting(tmp_path):
    assert load_recovery_settings(write(tmp_path, RECOVERY), {}).gateway.min_free_bytes == 128 * MB
    path = write(tmp_path, edit(RECOVERY, 'id = "dr"', 'id = "dr"\nmin_free_bytes = 0'))
    assert load_recovery_settings(path, {}).gateway.min_free_bytes == 0
    path = write(tmp_path, edit(RECOVERY, 'id = "dr"', 'id = "dr"\nmin_free_bytes = "lots"'))
    assert config_error(load_recovery_settings, path).startswith("gateway.min_free_bytes: expected an integer")


# ---------------------------------------------------------------------------- "no space" translation


def test_no_space_is_recognised_in_every_form():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    wrapped = OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(wrapped)
    assert not is_disk_full(OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")))

    class PgDiskFull(Exception):
        sqlstate = "53100"

    try:
        try:
            raise PgDiskFull("could not extend file")
        except PgDiskFull as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert DiskFull("x").retryable and isinstance(DiskFull("x"), StoreError)
    assert sqlite_dir("sqlite:////var/lib/x/state.sqlite").as_posix() == "/var/lib/x"
    assert sqlite_dir("postgresql+psycopg://u@db/x") is None and sqlite_dir("sqlite:///:memory:") is None


class PageLimit:
    """A real SQLITE_FULL: every connection of the store may grow the file to ``pages`` pages."""

    def __init__(self, store) -> None:
        self.store, self.pages = store, None
        event.listen(store.engine, "connect", self._apply)

    def _apply(self, dbapi_conn, _record) -> None:
        if self.pages is not None:
            dbapi_conn.execute(f"PRAGMA max_page_count={self.pages}")

    def set(self, pages: int | None) -> None:
        self.pages = pages
        self.store.dispose()  # every pooled connection is opened again with the new limit
        if pages is None:
            with self.store.engine.connect() as c:
                c.exec_driver_sql("PRAGMA max_page_count=1073741823")

    def current(self) -> int:
        with self.store.engine.connect() as c:
            return c.exec_driver_sql("PRAGMA page_count").scalar()


def test_a_full_state_store_raises_diskfull_and_keeps_nothing(tmp_path):
    p = Pipeline(tmp_path)
    limit = PageLimit(p.src)
    limit.set(limit.current())
    with pytest.raises(DiskFull) as info:
        with p.src.tx() as s:
            s.execute(text("INSERT INTO outbox_body (sha256, size, data) VALUES ('x', 1, :d)"), {"d": b"y" * 500_000})
    assert info.value.retryable and "disk full" in str(info.value)
    limit.set(None)
    with p.src.read() as s:
        assert s.execute(text("SELECT count(*) FROM outbox_body")).scalar() == 0


# ---------------------------------------------------------------------------- capture paused at the bound


def drain(p: Pipeline) -> None:
    """Ship, replay, learn what was applied: the source's queue empties."""
    while p.shipper.ship_once():
        pass
    with p.dst.tx() as s:
        from mailrepl.shared.store.models import Replica
        rid = s.scalar(select(Replica.id).where(Replica.address == "alice"))
    p.replay.replay(rid, p.standby.open("alice"))
    p.shipper.poll_progress()


def queued(p: Pipeline) -> tuple[int, int]:
    with p.src.read() as s:
        rows = s.execute(select(OutboxRow.size).join(Mailbox).where(Mailbox.address == "alice")).scalars().all()
    return len(rows), sum(rows)


def test_capture_pauses_at_the_bound_and_catches_up_when_the_queue_drains(tmp_path):
    p = Pipeline(tmp_path, chunk=3)
    limits = QueueLimits(max_changes=100, max_bytes=10 * MB, mailbox_max_changes=10, mailbox_max_bytes=10 * MB,
                         warn_ratio=0.5, min_free_bytes=0)
    gate = QueueGate(p.src, limits, cache_seconds=0)
    p.capture = CaptureEngine(p.src, chunk_messages=3, gate=gate)
    for i in range(40):
        p.primary.deliver("alice", _msg(i))
    mid = p.mailbox().id
    report = p.capture.cycle(mid, p.primary.open("alice"))
    n, _ = queued(p)
    # the folder create + chunks of 3 until the mailbox's queue reached 10: one chunk may overshoot
    assert 10 <= n < 10 + 3, n
    assert report.paused and "capture paused" in report.paused
    with p.src.read() as s:
        fs = s.scalar(select(FolderState).where(FolderState.name == "INBOX"))
        assert fs.pending_uids, "the rest stays pending, the folder's target cursor is not reached"
    # held: a further cycle takes nothing, even with more mail arriving
    p.primary.deliver("alice", _msg(99))
    assert p.capture.cycle(mid, p.primary.open("alice")).paused
    assert queued(p)[0] == n
    # the queue drains without capture; capture then resumes by itself, in steps of the bound
    for _ in range(10):
        drain(p)
        report = p.capture.cycle(mid, p.primary.open("alice"))
        assert queued(p)[0] < 10 + 3
        if not report.paused and report.pending == 0:
            break
    drain(p)
    p.assert_equal()
    assert p.mailbox().phase == "replicating"


def test_a_message_larger_than_the_bound_still_goes(tmp_path):
    p = Pipeline(tmp_path, chunk=1)
    limits = QueueLimits(max_changes=1000, max_bytes=1000, mailbox_max_changes=1000, mailbox_max_bytes=1000,
                         min_free_bytes=0)
    p.capture = CaptureEngine(p.src, chunk_messages=1, gate=QueueGate(p.src, limits, cache_seconds=0))
    for i in range(3):
        p.primary.deliver("alice", _msg(i, size=5000))  # each five times the byte bound
    mid = p.mailbox().id
    for _ in range(10):
        report = p.capture.cycle(mid, p.primary.open("alice"))
        assert queued(p)[1] <= 5200  # never more than one such message queued
        drain(p)
        if not report.paused and report.pending == 0:
            break
    p.assert_equal()


def test_the_gateway_wide_bound_holds_every_mailbox(tmp_path):
    p = Pipeline(tmp_path, chunk=2)
    with p.src.tx() as s:
        s.add(Mailbox(server="primary", address="bob", protected=True, phase="seeding"))
    limits = QueueLimits(max_changes=6, max_bytes=10 * MB, mailbox_max_changes=6, mailbox_max_bytes=10 * MB,
                         min_free_bytes=0)
    gate = QueueGate(p.src, limits, cache_seconds=0)
    p.capture = CaptureEngine(p.src, chunk_messages=2, gate=gate)
    for i in range(10):
        p.primary.deliver("alice", _msg(i))
        p.primary.deliver("bob", _msg(50 + i))
    with p.src.read() as s:
        alice, bob = (s.scalar(select(Mailbox.id).where(Mailbox.address == a)) for a in ("alice", "bob"))
    assert p.capture.cycle(alice, p.primary.open("alice")).paused
    report = p.capture.cycle(bob, p.primary.open("bob"))
    assert report.paused and "gateway-wide" in report.paused and report.changes == 0
    assert gate.report().level == "full" and gate.report().alarms()


def test_a_full_state_store_stops_capture_cleanly_and_it_resumes(tmp_path):
    p = Pipeline(tmp_path, chunk=2)
    gate = QueueGate(p.src, QueueLimits(min_free_bytes=0), cache_seconds=0)
    p.capture = CaptureEngine(p.src, chunk_messages=2, gate=gate)
    limit = PageLimit(p.src)
    mid = p.mailbox().id
    p.primary.deliver("alice", _msg(0))
    p.capture.cycle(mid, p.primary.open("alice"))
    before = p.mailbox()
    limit.set(limit.current())  # the disk is full from here on
    for i in range(1, 8):
        p.primary.deliver("alice", _msg(i, size=100_000))
    report = p.capture.cycle(mid, p.primary.open("alice"))
    assert report.paused and report.paused.startswith("disk full")
    assert gate.disk_alarm and gate.report().disk_full
    after = p.mailbox()
    assert after.last_seq == before.last_seq, "nothing half-written: the chunk's transaction rolled back"
    with p.src.read() as s:
        cursors = {f.name: f.cursor for f in s.scalars(select(FolderState))}
    limit.set(None)  # space returns
    report = p.capture.cycle(mid, p.primary.open("alice"))
    assert not report.paused and gate.disk_alarm is None
    with p.src.read() as s:
        assert {f.name: f.cursor for f in s.scalars(select(FolderState))} != cursors
    drain(p)
    p.assert_equal()


def test_a_free_space_floor_holds_capture_before_any_write(tmp_path):
    p = Pipeline(tmp_path)
    free = {"n": 10 * MB}
    gate = QueueGate(p.src, QueueLimits(min_free_bytes=64 * MB), state_dir=tmp_path, cache_seconds=0,
                     free=lambda _: free["n"])
    p.capture = CaptureEngine(p.src, gate=gate)
    p.primary.deliver("alice", _msg(0))
    report = p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert report.paused and "min_free_bytes" in report.paused and p.mailbox().last_seq == 0
    free["n"] = 100 * MB
    assert not p.capture.cycle(p.mailbox().id, p.primary.open("alice")).paused
    assert gate.disk_alarm is None and p.mailbox().last_seq > 0


# ---------------------------------------------------------------------------- the recovery gateway refuses


def test_the_recovery_gateway_refuses_a_batch_it_cannot_store_with_507(tmp_path):
    p = Pipeline(tmp_path)
    free = {"n": 1 * MB}
    guard = DiskGuard({"state": tmp_path, "blobs": tmp_path / "blobs"}, 64 * MB, free=lambda _: free["n"])
    app = FastAPI()
    app.include_router(ingest_router(p.receiver, source_access(_standby_adapter(p)), 1 << 30, disk=guard))
    p.shipper.client = TestClient(app, base_url="http://recovery")
    for i in range(5):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    with pytest.raises(PeerRefused) as info:
        p.shipper.ship_once()
    assert info.value.status_code == 507 and info.value.retryable and info.value.back_off >= 1
    assert "disk full at the recovery gateway" in info.value.detail
    assert guard.alarm and guard.refused == 1
    with p.dst.read() as s:
        assert s.scalar(select(InboxRow.seq)) is None, "nothing stored, nothing acknowledged"
    assert p.mailbox().acked_seq == 0
    free["n"] = 1 << 30  # space returns: the same batch goes, and replays
    drain(p)
    assert guard.alarm is None
    p.assert_equal()


def _standby_adapter(p: Pipeline):
    from tests.unit.memory_server import MemoryAdapter
    return MemoryAdapter("standby", p.standby)


def test_the_status_table_shows_the_queue_alarm():
    from rich.console import Console

    from mailrepl.shared.cli.status_view import mailbox_table

    row = dict(address="alice", server="primary", protected=True, phase="replicating", active_site="primary",
               copy_queue=120, replay_queue=0, lag_seconds=3.0, last_captured_seq=121, last_applied_seq=1,
               rejected=0, error=None, queue_alarm="full: 120 changes queued: capture paused")
    console = Console(record=True, width=400)
    console.print(mailbox_table([row]))
    assert "capture paused" in console.export_text()


@pytest.mark.postgres
def test_the_queue_is_measured_on_postgresql(postgres_url):
    from mailrepl.shared.store import open_store

    store = open_store(postgres_url)
    store.migrate()
    try:
        with store.tx() as s:
            a = Mailbox(server="primary", address="alice", protected=True, last_seq=3, applied_seq=1)
            gone = Mailbox(server="primary", address="dora", protected=True, last_seq=1, site_state="active-at-dr")
            off = Mailbox(server="primary", address="erin", protected=False, last_seq=1)
            s.add_all([a, gone, off])
            s.flush()
            s.add_all([OutboxRow(mailbox_id=a.id, seq=2, change="{}", digest="d", size=700),
                       OutboxRow(mailbox_id=a.id, seq=3, change="{}", digest="d", size=300),
                       OutboxRow(mailbox_id=gone.id, seq=1, change="{}", digest="d", size=5000),
                       OutboxRow(mailbox_id=off.id, seq=1, change="{}", digest="d", size=9000)])
        limits = QueueLimits(max_changes=2, max_bytes=10 * MB, mailbox_max_changes=2, mailbox_max_bytes=10 * MB)
        gate = QueueGate(store, limits, cache_seconds=0)
        assert gate.total() == QueueUsage(2, 1000)  # neither the mailbox cut over to DR nor the unprotected one
        with store.read() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.address == "alice"))
            assert gate.usage_of(s, mbx) == QueueUsage(2, 1000)
            alice = mbx.id
        assert "at its bound" in gate.hold(alice)
    finally:
        store.dispose()


def test_a_blob_that_does_not_fit_leaves_nothing_behind(tmp_path):
    import os

    from mailrepl.shared.content.blobstore import BlobStore
    from mailrepl.shared.content.mime_split import blob_key
    from tests.support.tmpfs import small_disk

    with small_disk(tmp_path / "disk", "256k") as disk:
        blobs = BlobStore(tmp_path / "disk" / "blobs")
        small, big = os.urandom(20_000), os.urandom(1 << 20)
        items = [(blob_key(small), small), (blob_key(big), big)]
        with pytest.raises(DiskFull) as info:
            blobs.put_many(items)
        assert info.value.retryable and "disk full" in str(info.value)
        assert list((tmp_path / "disk" / "blobs" / "tmp").iterdir()) == [], "no temporary file is left"
        assert not blobs.has(blob_key(big))
        disk.resize("4m")  # space returns
        blobs.put_many(items)
        assert blobs.get(blob_key(big)) == big and blobs.get(blob_key(small)) == small
