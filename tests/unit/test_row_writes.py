"""Rows handed to the driver as tuples (``store.row_writes``): the same rows Core would write —
defaults, type conversions, keys handed out in order and never twice — on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from sqlalchemy import delete, select

from mailrepl.shared.capture_state.catalog import insert_entries
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import CatalogEntry, FolderState, InboxRow, Mailbox, OutboxRow, Replica
from mailrepl.shared.store.row_writes import insert_rows, insert_rows_with_ids


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.sqlite"
    else:
        url = request.getfixturevalue("postgres_databases").create()
    st = open_store(url)
    st.migrate()
    yield st
    st.dispose()


def _folder(store) -> tuple[int, int]:
    with store.tx() as s:
        mbx = Mailbox(server="primary", address="alice")
        s.add(mbx)
        s.flush()
        folder = FolderState(mailbox_id=mbx.id, name="INBOX")
        s.add(folder)
        s.flush()
        return mbx.id, folder.id


def _entry(mbx: int, folder: int, uid: int) -> tuple:
    """A catalogue row as ``insert_entries`` takes it: mailbox, folder, uid, guid, sha256, size, flags."""
    return (mbx, folder, uid, f"g{uid}" if uid % 2 else None, f"{uid:064x}", 100 + uid, "\\Seen" if uid % 3 else "")


def test_catalogue_ids_come_back_in_row_order_and_name_the_rows_written(store):
    mbx, folder = _folder(store)
    with store.tx() as s:
        one = insert_entries(s, [_entry(mbx, folder, 1)])
        many = insert_entries(s, [_entry(mbx, folder, u) for u in range(2, 302)])
        assert insert_entries(s, []) == []
    assert len(set(one + many)) == 301 and many == sorted(many) and one[0] < many[0]
    with store.read() as s:
        rows = {c.mid: c for c in s.scalars(select(CatalogEntry))}
    for mid, uid in zip(one + many, range(1, 302)):
        got = rows[mid]
        assert (got.mailbox_id, got.folder_id, got.uid, got.guid, got.sha256, got.size, got.flags) == \
            _entry(mbx, folder, uid)


def test_a_catalogue_id_is_never_handed_out_twice_after_the_newest_is_deleted(store):
    mbx, folder = _folder(store)
    with store.tx() as s:
        mids = insert_entries(s, [_entry(mbx, folder, u) for u in (1, 2, 3)])
        s.execute(delete(CatalogEntry).where(CatalogEntry.mid == mids[-1]))
    with store.tx() as s:
        again = insert_entries(s, [_entry(mbx, folder, u) for u in (4, 5)])
    assert min(again) > mids[-1]


def test_defaults_and_type_conversions_are_those_core_applies(store):
    mbx, _ = _folder(store)
    when = datetime(2026, 12, 7, 3, 4, 5, 600000, tzinfo=timezone.utc)
    with store.tx() as s:
        rep = Replica(source_id="src", server="primary", address="alice", target="standby")
        s.add(rep)
        s.flush()
        # ``size`` left out: its default 0; ``created_at`` left out: utcnow() per row
        assert insert_rows(s, OutboxRow.__table__, ("mailbox_id", "seq", "change", "digest", "sha256"),
                           [(mbx, 1, "{}", "d" * 64, None), (mbx, 2, "{\"k\":\"ü\"}", "e" * 64, "f" * 64)]) == 2
        insert_rows(s, InboxRow.__table__, ("replica_id", "seq", "change", "digest", "sha256", "state", "captured_at"),
                    [(rep.id, 1, "{}", "d" * 64, None, "received", when),
                     (rep.id, 2, "{}", "d" * 64, None, "received", None)])
        assert insert_rows(s, InboxRow.__table__, ("replica_id", "seq"), []) == 0
    with store.read() as s:
        out = s.execute(select(OutboxRow.seq, OutboxRow.size, OutboxRow.change, OutboxRow.created_at)
                        .order_by(OutboxRow.seq)).all()
        inbox = s.execute(select(InboxRow.seq, InboxRow.captured_at).order_by(InboxRow.seq)).all()
    assert [(r.seq, r.size, r.change) for r in out] == [(1, 0, "{}"), (2, 0, "{\"k\":\"ü\"}")]
    assert all(r.created_at is not None for r in out)
    got = inbox[0].captured_at  # PostgreSQL gives it back aware, SQLite as the UTC text it stored
    assert got == when if got.tzinfo else got == when.replace(tzinfo=None)
    assert inbox[1].captured_at is None


def test_a_column_the_table_lacks_is_refused(store):
    with store.tx() as s, pytest.raises(ValueError, match="no column 'nope'"):
        insert_rows(s, OutboxRow.__table__, ("mailbox_id", "nope"), [(1, 2)])


@pytest.mark.postgres
def test_concurrent_writers_on_postgresql_get_disjoint_ids(postgres_databases):
    """Two transactions inserting at once: every key is handed out once, each writer's in order."""
    st = open_store(postgres_databases.create())
    st.migrate()
    try:
        mbx, folder = _folder(st)
        got: dict[int, list[int]] = {}
        start = threading.Barrier(2)

        def writer(n: int) -> None:
            start.wait(10)
            for round_ in range(5):
                with st.tx() as s:
                    base = 10_000 * n + 100 * round_
                    got.setdefault(n, []).extend(
                        insert_rows_with_ids(s, CatalogEntry.__table__, "mid",
                                             ("mailbox_id", "folder_id", "uid", "sha256", "size"),
                                             [(mbx, folder, base + u, "0" * 64, 1) for u in range(50)]))

        threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        every = got[1] + got[2]
        assert len(every) == 500 and len(set(every)) == 500
        assert got[1] == sorted(got[1]) and got[2] == sorted(got[2])
        with st.read() as s:
            by_mid = dict(s.execute(select(CatalogEntry.mid, CatalogEntry.uid)).all())
        assert sorted(by_mid) == sorted(every)
        for n in (1, 2):  # the n-th key given to writer n names its n-th row
            uids = [10_000 * n + 100 * r + u for r in range(5) for u in range(50)]
            assert [by_mid[m] for m in got[n]] == uids
    finally:
        st.dispose()
