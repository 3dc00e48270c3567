"""State store transactions: writers queue, readers never wait for a writer (SQLite WAL)."""
from __future__ import annotations

import threading

from sqlalchemy import func, select

from shared.store import open_store
from shared.store.models import Mailbox


def test_a_read_does_not_wait_for_an_open_write_and_sees_only_committed_rows(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    store.migrate()
    with store.tx() as s:
        s.add(Mailbox(server="primary", address="alice"))
    writing, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.tx() as s:
            s.add(Mailbox(server="primary", address="bob"))
            s.flush()  # holds the write lock from here until the block ends
            writing.set()
            release.wait(30)

    counts: list[int] = []

    def reader() -> None:
        with store.read() as s:
            counts.append(s.scalar(select(func.count()).select_from(Mailbox)))

    w = threading.Thread(target=writer)
    w.start()
    assert writing.wait(10)
    r = threading.Thread(target=reader)
    r.start()
    r.join(10)
    finished = not r.is_alive()
    release.set()
    w.join(10)
    r.join(10)
    assert finished, "the read waited for the writer"
    assert counts == [1], "the read saw an uncommitted row"
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Mailbox)) == 2
    store.dispose()
