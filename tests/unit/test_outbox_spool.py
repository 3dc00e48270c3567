"""The outbox spool: bulk bodies queued in segment files instead of rows.

The segments read back byte-exactly (sealed when a key is set), a seed through them leaves the
standby equal, a segment goes once no queued body is stored in it (and only after the commit that
dropped the last one is on disk), a rolled-back capture takes its segment with it, a crash's
leftovers are swept at start-up, and bodies queued in rows before the spool existed stay
readable."""
from __future__ import annotations

import os

import pytest
from sqlalchemy import select, text

from mailrepl.shared.engines import capture_writes
from mailrepl.shared.errors import StoreError
from mailrepl.shared.store import db as store_db
from mailrepl.shared.store import open_store
from mailrepl.shared.store.body_spool import BodySpool
from mailrepl.shared.store.models import OutboxBody, OutboxRow
from mailrepl.shared.store.outbox import drop_unreferenced_bodies, sweep_spool
from mailrepl.shared.store.sealing import Sealer
from tests.unit.test_pipeline_memory import Pipeline

MARK = b"SPOOLED-PLAINTEXT-5c1e"


def _msg(i: int, size: int = 3000) -> bytes:
    return (f"Subject: s{i}\r\nMessage-ID: <s{i}@x>\r\n\r\n".encode() + MARK
            + bytes(range(256)) * (size // 256) + b"\r\n")


def _spooled(tmp_path, monkeypatch, sealer=None) -> Pipeline:
    """A pipeline whose source queues every chunk of new bodies in its spool."""
    monkeypatch.setattr(capture_writes, "SPOOL_MIN_BYTES", 1)
    p = Pipeline(tmp_path)
    if sealer is not None:
        p.src.sealer = sealer
    p.src.spool = BodySpool(tmp_path / "outbox", p.src.sealer)
    return p


def _bodies(store) -> list[tuple]:
    with store.read() as s:
        return list(s.execute(select(OutboxBody.sha256, OutboxBody.data, OutboxBody.segment,
                                     OutboxBody.seg_offset, OutboxBody.seg_length)))


# ---------------------------------------------------------------------------- the files


def test_a_segment_reads_back_every_body_exactly_and_sealed(tmp_path):
    bodies = [("a" * 64, b""), ("b" * 64, MARK + bytes(range(256)) * 40), ("c" * 64, b"\x00mrenc\x01 looks sealed")]
    for sealer in (None, Sealer(os.urandom(32))):
        spool = BodySpool(tmp_path / ("sealed" if sealer else "plain"), *(sealer and [sealer] or []))
        placed = spool.write(bodies)
        (name,) = {seg for seg, _, _ in placed}
        assert spool.segments() == [name]
        got = dict(spool.read([(sha, seg, at, n) for (sha, _), (seg, at, n) in zip(bodies, placed)]))
        assert got == dict(bodies)
        raw = (spool.root / name).read_bytes()
        assert (MARK in raw) is (sealer is None), "a key seals what the segment holds"
        assert os.stat(spool.root / name).st_mode & 0o777 == 0o600
        assert os.stat(spool.root).st_mode & 0o777 == 0o700


def test_a_damaged_or_missing_segment_is_a_clear_error(tmp_path):
    spool = BodySpool(tmp_path / "outbox")
    ((name, at, n),) = spool.write([("d" * 64, MARK * 100)])
    with open(spool.root / name, "r+b") as f:
        f.truncate(n - 10)
    with pytest.raises(StoreError, match="cut short"):
        list(spool.read([("d" * 64, name, at, n)]))
    os.unlink(spool.root / name)
    with pytest.raises(StoreError, match=f"outbox segment {name} is missing"):
        list(spool.read([("d" * 64, name, at, n)]))
    with pytest.raises(StoreError, match="names no valid segment"):
        list(spool.read([("d" * 64, "../../etc/passwd", 0, 1)]))
    with pytest.raises(StoreError, match="does not decrypt|truncated"):
        sealed = BodySpool(tmp_path / "sealed", Sealer(os.urandom(32)))
        ((name, at, n),) = sealed.write([("e" * 64, MARK)])
        list(sealed.read([("f" * 64, name, at, n)]))  # stored under another address


def test_a_sweep_removes_only_segments_no_body_is_stored_in(tmp_path):
    spool = BodySpool(tmp_path / "outbox")
    ((kept, _, _),) = spool.write([("a" * 64, b"kept")])
    ((left, _, _),) = spool.write([("b" * 64, b"left by a crash")])
    (spool.root / "notes.txt").write_text("not ours")
    assert spool.sweep({kept}) == [left]
    assert spool.segments() == [kept] and (spool.root / "notes.txt").exists()


# ---------------------------------------------------------------------------- through the pipeline


def test_a_seed_through_the_spool_replicates_exactly_and_leaves_nothing(tmp_path, monkeypatch):
    p = _spooled(tmp_path, monkeypatch, Sealer(os.urandom(32)))
    for i in range(10):
        p.primary.deliver("alice", _msg(i), flags={"\\Seen"} if i % 2 else set())
    mid = p.mailbox().id
    p.capture.cycle(mid, p.primary.open("alice"))
    rows = _bodies(p.src)
    assert len(rows) == 10 and all(data is None and seg for _, data, seg, _, _ in rows), "bodies in segments"
    assert len(p.src.spool.segments()) == 4, "one segment per capture chunk of 3"
    assert all(MARK not in (p.src.spool.root / n).read_bytes() for n in p.src.spool.segments())
    p.sync()
    p.assert_equal()
    assert _bodies(p.src) == [] and p.src.spool.segments() == [], "acknowledged: segments removed"

    p.primary.deliver("alice", _msg(50))  # live changes go the same way
    p.primary.set_flags("alice", "INBOX", 1, {"\\Flagged"})
    p.sync()
    p.assert_equal()
    assert p.src.spool.segments() == []


def test_a_body_shared_by_two_queues_keeps_its_segment_until_both_are_done(tmp_path, monkeypatch):
    p = _spooled(tmp_path, monkeypatch)
    p.primary.deliver("alice", _msg(1))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    ((sha, _, seg, _, _),) = _bodies(p.src)
    with p.src.tx() as s:  # a second queued change refers to the same body (as a copy would)
        s.add(OutboxRow(mailbox_id=p.mailbox().id, seq=10**6, change="{}", digest="x", sha256=sha, size=1))
    with p.src.tx(durable=False) as s:
        drop_unreferenced_bodies(s, [sha], p.src)
    assert p.src.spool.segments() == [seg], "still referred to"
    with p.src.tx(durable=False) as s:
        s.execute(OutboxRow.__table__.delete())
        drop_unreferenced_bodies(s, [sha], p.src)
    assert p.src.spool.segments() == [] and _bodies(p.src) == []


def test_a_segment_goes_only_after_the_commit_that_freed_it_is_flushed(tmp_path, monkeypatch):
    p = _spooled(tmp_path, monkeypatch)
    p.primary.deliver("alice", _msg(1))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    ((sha, _, seg, _, _),) = _bodies(p.src)
    events: list[str] = []
    real_fsync, real_discard = store_db._fsync_if_present, p.src.spool.discard
    monkeypatch.setattr(store_db, "_fsync_if_present", lambda path: (events.append(f"fsync {os.path.basename(path)}"),
                                                                      real_fsync(path)))
    monkeypatch.setattr(p.src.spool, "discard", lambda names: (events.append(f"discard {list(names)}"),
                                                               real_discard(names)))
    with p.src.tx(durable=False) as s:  # an acknowledgement: a commit not flushed on its own
        s.execute(OutboxRow.__table__.delete())
        drop_unreferenced_bodies(s, [sha], p.src)
        assert events == [] and p.src.spool.segments() == [seg], "nothing removed before the commit"
    assert events == ["fsync src.sqlite-wal", f"discard {[seg]}"]
    assert p.src.spool.segments() == []


def test_a_segment_written_for_bodies_already_queued_is_not_kept(tmp_path, monkeypatch):
    p = _spooled(tmp_path, monkeypatch)
    for i in range(3):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    first = p.src.spool.segments()
    for i in (0, 1, 2, 0, 1, 2):  # the same bodies again (more than a cycle fetches itself: chunks
        p.primary.deliver("alice", _msg(i), folder="Archive")  # whose segments are written first)
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert p.src.spool.segments() == first, "the new segments named by no row are gone"
    assert len(_bodies(p.src)) == 3
    p.sync()
    p.assert_equal()


@pytest.mark.parametrize("count", [2, 5])  # fetched by the cycle itself (written in its transaction); in chunks
def test_a_capture_that_rolls_back_takes_its_segment_with_it(tmp_path, monkeypatch, count):
    p = _spooled(tmp_path, monkeypatch)
    for i in range(count):
        p.primary.deliver("alice", _msg(i))
    real = capture_writes.CaptureState.add_entries

    def broken(self, *args, **kwargs):
        raise StoreError("state store: simulated failure after the bodies were written")

    monkeypatch.setattr(capture_writes.CaptureState, "add_entries", broken)
    with pytest.raises(StoreError, match="simulated"):
        p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert p.src.spool.segments() == [] and _bodies(p.src) == []
    monkeypatch.setattr(capture_writes.CaptureState, "add_entries", real)
    p.sync()
    p.assert_equal()


def test_the_start_up_sweep_keeps_queued_bodies_and_drops_a_crash_leftover(tmp_path, monkeypatch):
    p = _spooled(tmp_path, monkeypatch)
    p.primary.deliver("alice", _msg(1))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    ((_, _, queued, _, _),) = _bodies(p.src)
    ((leftover, _, _),) = p.src.spool.write([("9" * 64, b"written, never committed")])
    assert sweep_spool(p.src) == [leftover]
    assert p.src.spool.segments() == [queued]
    p.sync()
    p.assert_equal()


def test_bodies_queued_in_rows_and_in_segments_ship_together(tmp_path, monkeypatch):
    p = Pipeline(tmp_path)  # no spool yet: the bodies go into their rows, as before the spool existed
    for i in range(4):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert all(data is not None and seg is None for _, data, seg, _, _ in _bodies(p.src))
    monkeypatch.setattr(capture_writes, "SPOOL_MIN_BYTES", 1)
    p.src.spool = BodySpool(tmp_path / "outbox", p.src.sealer)
    for i in range(4, 8):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    kinds = {seg is None for _, _, seg, _, _ in _bodies(p.src)}
    assert kinds == {True, False}
    p.sync()
    p.assert_equal()
    assert _bodies(p.src) == [] and p.src.spool.segments() == []


def test_small_chunks_stay_in_rows(tmp_path):
    p = Pipeline(tmp_path)
    p.src.spool = BodySpool(tmp_path / "outbox", p.src.sealer)
    p.primary.deliver("alice", _msg(1))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    ((_, data, seg, _, _),) = _bodies(p.src)
    assert data is not None and seg is None and p.src.spool.segments() == []


def test_a_segment_without_a_configured_spool_is_a_clear_error(tmp_path, monkeypatch):
    p = _spooled(tmp_path, monkeypatch)
    p.primary.deliver("alice", _msg(1))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    p.src.spool = None
    with pytest.raises(StoreError, match="no outbox spool configured"):
        p.shipper.ship_once()


def test_the_migration_keeps_queued_bodies_readable(tmp_path):
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path}/old.sqlite"
    store = open_store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0013")
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO outbox_body (sha256, size, data) VALUES ('ab', 3, x'616263')"))
    store.migrate()
    assert _bodies(store) == [("ab", b"abc", None, None, None)]
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0013")  # nothing in segments: the way back is open
    store.migrate()
    with store.tx() as s:
        s.execute(text("UPDATE outbox_body SET data = NULL, segment = 'x', seg_offset = 0, seg_length = 3"))
    with pytest.raises(RuntimeError, match="let the outbox drain"):
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0013")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_segment_freed_by_an_unflushed_commit_goes_on_either_database(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path}/s.sqlite" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(url, spool_dir=str(tmp_path / "outbox"))
    try:
        store.migrate()
        ((seg, at, n),) = store.spool.write([("a" * 64, MARK)])
        with store.tx() as s:
            s.add(OutboxBody(sha256="a" * 64, size=len(MARK), segment=seg, seg_offset=at, seg_length=n))
        with store.tx(durable=False) as s:  # made durable for the segment's sake (PostgreSQL: SET LOCAL)
            drop_unreferenced_bodies(s, ["a" * 64], store)
        assert store.spool.segments() == [] and _bodies(store) == []
        with store.tx(durable=False) as s:  # nothing of the spool dropped: the commit stays relaxed
            drop_unreferenced_bodies(s, ["b" * 64], store)
            if kind == "postgres":
                assert s.execute(text("SHOW synchronous_commit")).scalar() == "off"
    finally:
        store.dispose()
