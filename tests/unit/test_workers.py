"""MailboxWorkers hands over an idle cached session (cutover reuses the replayer's login)."""
from __future__ import annotations

import threading
import time

from mailrepl.shared.runtime.workers import Job, MailboxWorkers


class FakeSession:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_take_session_hands_over_only_an_idle_cached_session():
    opened: list[FakeSession] = []
    running = threading.Event()
    release = threading.Event()

    def open_session() -> FakeSession:
        opened.append(FakeSession())
        return opened[-1]

    def run(session) -> None:
        running.set()
        release.wait(10)

    jobs = [Job(key=1, open_session=open_session, run=run)]
    workers = MailboxWorkers("t", lambda: list(jobs), workers=1, poll_interval=0.05)
    assert workers.take_session(1) is None  # nothing cached yet
    workers.start()
    try:
        assert running.wait(5)
        assert workers.take_session(1) is None  # a job of it runs: not handed over
        jobs.clear()
        release.set()
        deadline = time.monotonic() + 5
        taken = None
        while taken is None and time.monotonic() < deadline:
            taken = workers.take_session(1)
            time.sleep(0.02)
        assert taken is opened[0] and not taken.closed
        assert workers.take_session(1) is None  # handed over once
    finally:
        workers.stop()
    assert not opened[0].closed  # the caller owns it now: stopping the pool does not close it
