"""The SQLite writer queue: writers of one process are granted the write lock in arrival order,
each the moment its predecessor commits or rolls back, on a real state store file."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from mailrepl.shared.errors import StoreError
from mailrepl.shared.store.db import open_store
from mailrepl.shared.store.sqlite_writer import FairLock, writer_queue


def _wait_until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_lock_goes_to_waiters_in_the_order_they_came():
    lock = FairLock()
    assert lock.acquire(1)
    order: list[int] = []

    def wait(i: int) -> None:
        assert lock.acquire(10)
        order.append(i)
        lock.release()

    threads = []
    for i in range(5):
        t = threading.Thread(target=wait, args=(i,))
        t.start()
        threads.append(t)
        _wait_until(lambda n=i + 1: lock.waiting == n)  # queued before the next one comes
    lock.release()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]
    assert lock.acquire(0.1)  # free again after the last one
    lock.release()


def test_a_waiter_gives_up_after_its_timeout_and_leaves_the_queue():
    lock = FairLock()
    assert lock.acquire(1)
    started = time.monotonic()
    assert lock.acquire(0.2) is False
    assert time.monotonic() - started >= 0.2
    assert lock.waiting == 0
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_any_thread_may_release():
    lock = FairLock()
    assert lock.acquire(1)
    t = threading.Thread(target=lock.release)
    t.start()
    t.join(5)
    assert lock.acquire(0.1)


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    with s.tx() as session:
        session.execute(text("CREATE TABLE t (who TEXT, at INTEGER)"))
    yield s
    s.dispose()


def test_writers_queue_in_the_process_and_are_handed_the_lock_on_commit(store, tmp_path):
    queue = writer_queue(f"{tmp_path}/state.sqlite", 60)
    holding, finish = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with store.tx() as session:
            session.execute(text("INSERT INTO t VALUES ('first', 1)"))
            holding.set()
            finish.wait(10)
            order.append("first")

    def later(name: str) -> None:
        with store.tx() as session:
            session.execute(text(f"INSERT INTO t VALUES ('{name}', 2)"))
            order.append(name)

    a = threading.Thread(target=first)
    a.start()
    assert holding.wait(10)
    others = []
    for i, name in enumerate(("second", "third")):
        t = threading.Thread(target=later, args=(name,))
        t.start()
        others.append(t)
        # waiting in the process's queue, not sleeping in SQLite's busy handler
        _wait_until(lambda n=i + 1: queue.lock.waiting == n)
    started = time.monotonic()
    finish.set()
    for t in (a, *others):
        t.join(10)
    assert order == ["first", "second", "third"]
    assert time.monotonic() - started < 1.0  # handed on at commit, not after a busy sleep
    with store.read() as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 3


def test_a_failed_transaction_hands_the_lock_on(store):
    with pytest.raises(StoreError):
        with store.tx() as session:
            session.execute(text("INSERT INTO t VALUES ('x', 1)"))
            session.execute(text("INSERT INTO no_such_table VALUES (1)"))
    done = threading.Event()

    def write() -> None:
        with store.tx() as session:
            session.execute(text("INSERT INTO t VALUES ('y', 2)"))
        done.set()

    threading.Thread(target=write).start()
    assert done.wait(5)
    with store.read() as session:
        assert [r[0] for r in session.execute(text("SELECT who FROM t"))] == ["y"]


def test_reads_do_not_queue_behind_a_writer(store):
    holding, finish = threading.Event(), threading.Event()

    def writer() -> None:
        with store.tx() as session:
            session.execute(text("INSERT INTO t VALUES ('w', 1)"))
            holding.set()
            finish.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert holding.wait(10)
    try:
        started = time.monotonic()
        with store.read() as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
        assert time.monotonic() - started < 1.0
    finally:
        finish.set()
        t.join(10)
