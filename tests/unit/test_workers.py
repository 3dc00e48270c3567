"""MailboxWorkers hands over an idle cached session (cutover reuses the replayer's login)."""
from __future__ import annotations

import threading
import time

from mailrepl.shared.errors import ServerUnavailable
from mailrepl.shared.runtime.workers import Job, MailboxWorkers, _Slot


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


def recording_jobs(keys, found=lambda key: None, has_work=lambda key: False):
    """Jobs that note their key in ``runs`` (under ``lock``) each time they run and return ``found(key)``."""
    runs: list = []
    lock = threading.Lock()

    def job(key) -> Job:
        def run(session):
            with lock:
                runs.append(key)
            return found(key)
        return Job(key=key, open_session=FakeSession, run=run, has_work=has_work(key))

    return [job(k) for k in keys], runs, lock


def test_a_keyed_wake_runs_only_that_job_and_the_poll_runs_all():
    jobs, runs, _ = recording_jobs(range(10))
    workers = MailboxWorkers("t", lambda: list(jobs), workers=2, poll_interval=1.5)
    workers.start()
    try:
        deadline = time.monotonic() + 5
        while len(runs) < 10 and time.monotonic() < deadline:  # the first pass runs every job
            time.sleep(0.01)
        assert sorted(runs) == list(range(10))
        runs.clear()
        workers.wake(3)
        workers.wake(7)
        time.sleep(0.3)
        assert sorted(runs) == [3, 7]  # a change in two mailboxes starts two cycles, not ten
        runs.clear()
        workers.wake()  # no key: every job
        time.sleep(0.3)
        assert sorted(runs) == list(range(10))
        runs.clear()
        time.sleep(1.6)  # the poll runs every job
        assert sorted(set(runs)) == list(range(10))
    finally:
        workers.stop()


def test_a_key_woken_while_its_job_runs_runs_again_afterwards():
    started = threading.Event()
    release = threading.Event()
    runs: list[float] = []

    def run(session) -> None:
        runs.append(time.monotonic())
        started.set()
        if len(runs) == 2:
            release.wait(5)  # the second run (the first woken one) is held

    workers = MailboxWorkers("t", lambda: [Job(key=1, open_session=FakeSession, run=run)], workers=1,
                             poll_interval=30)
    workers.start()
    try:
        assert started.wait(5)
        time.sleep(0.1)
        workers.wake(1)
        time.sleep(0.2)
        assert len(runs) == 2  # running, held
        workers.wake(1)  # a change while it runs: must not wait for the 30 s poll
        release.set()
        time.sleep(0.3)
        assert len(runs) == 3
    finally:
        workers.stop()


def test_a_woken_job_runs_before_the_poll_sweep_and_in_the_order_woken():
    """A poll sweep of many mailboxes is queued; mailboxes woken meanwhile (push notifications)
    run before the rest of the sweep, first woken first, also the ones already waiting in it."""
    order: list[int] = []
    gate = threading.Event()
    first = threading.Event()

    def job(key: int) -> Job:
        def run(session) -> None:
            order.append(key)
            if key == 0:
                first.set()
                gate.wait(5)  # holds the only thread while the sweep queues up behind it
        return Job(key=key, open_session=FakeSession, run=run)

    jobs = [job(k) for k in range(50)]
    workers = MailboxWorkers("t", lambda: list(jobs), workers=1, poll_interval=30)
    workers.start()
    try:
        assert first.wait(5)
        time.sleep(0.1)  # the first pass (a sweep of all 50) is queued behind job 0
        workers.wake(42)  # waiting in the sweep: moves up
        time.sleep(0.05)
        workers.wake(17)
        time.sleep(0.1)
        gate.set()
        deadline = time.monotonic() + 5
        while len(order) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert order[:3] == [0, 42, 17]
        assert sorted(order) == list(range(50))  # the sweep still runs every job, each once
        assert order[3:] == [k for k in range(1, 50) if k not in (42, 17)]
    finally:
        workers.stop()


def test_a_woken_job_is_not_queued_behind_a_sweep_already_queued():
    """A job woken after the sweep was queued (not part of it: it ran just before) goes first."""
    order: list[int] = []
    gate = threading.Event()
    first = threading.Event()
    lock = threading.Lock()

    def job(key: int) -> Job:
        def run(session) -> None:
            with lock:
                order.append(key)
            if key == 0 and not first.is_set():
                first.set()
                gate.wait(5)
            else:
                time.sleep(0.02)  # a cycle takes a while: the rerun is queued during the next one
        return Job(key=key, open_session=FakeSession, run=run)

    jobs = [job(k) for k in range(30)]
    workers = MailboxWorkers("t", lambda: list(jobs), workers=1, poll_interval=30)
    workers.start()
    try:
        assert first.wait(5)
        time.sleep(0.1)
        workers.wake(0)  # runs now: runs again when done, ahead of the 29 queued
        time.sleep(0.1)
        gate.set()
        deadline = time.monotonic() + 5
        while len(order) < 31 and time.monotonic() < deadline:
            time.sleep(0.01)
        again = order.index(0, 1)
        assert again <= 2, order  # at most the one sweep job that started meanwhile, not 29
        assert sorted(order[1:again] + order[again + 1:]) == list(range(1, 30))
    finally:
        workers.stop()


def test_jobs_of_a_server_that_is_back_stop_waiting_out_their_back_off():
    """Two mailboxes of one server fail while it is down and back off; when one succeeds again,
    the other runs at once, not when its back-off ends; a job of another server keeps waiting."""
    down = {"srv": True, "other": True}
    runs: dict[int, list[float]] = {1: [], 2: [], 3: []}
    lock = threading.Lock()

    def job(key: int, server: str) -> Job:
        def run(session) -> None:
            with lock:
                runs[key].append(time.monotonic())
            if down[server]:
                raise ServerUnavailable(f"{server} is down", retryable=True)
        return Job(key=key, open_session=FakeSession, run=run, group=server)

    jobs = [job(1, "srv"), job(2, "srv"), job(3, "other")]
    workers = MailboxWorkers("t", lambda: list(jobs), workers=3, poll_interval=0.05, back_off_max=30.0)
    workers.start()
    try:
        deadline = time.monotonic() + 10
        while min(len(r) for r in runs.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert min(len(r) for r in runs.values()) >= 3  # each failed 3 times: back-offs of 1, 2, 4 s
        for r in runs.values():
            assert r[2] - r[1] >= 1.5  # back-off in force
        down["srv"] = False
        # job 1 is told the server is back (as a wake-up after new work would); job 2 follows at once
        with lock:
            before = {k: len(r) for k, r in runs.items()}
        workers._slots[1].not_before = 0.0
        workers.wake(1)
        deadline = time.monotonic() + 2.0
        while len(runs[2]) == before[2] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(runs[1]) > before[1] and len(runs[2]) > before[2], "job 2 still waits out its back-off"
        time.sleep(0.3)
        assert len(runs[3]) == before[3], "a job of another server stopped waiting too"
    finally:
        workers.stop()


def test_a_server_back_restarts_its_jobs_back_off_from_the_first_step():
    """The failures were the outage's: a job that fails again right after (the server flaps)
    waits 1 s, not the longest back-off it had reached."""
    workers = MailboxWorkers("t", lambda: [], workers=1, poll_interval=0.05)
    for key, group in ((1, "srv"), (2, "srv"), (3, "other")):
        slot = workers._slots.setdefault(key, _Slot())
        slot.group, slot.failures, slot.not_before = group, 7, time.monotonic() + 60
    workers._group_back("srv")
    assert [(workers._slots[k].failures, workers._slots[k].not_before) for k in (1, 2)] == [(0, 0.0), (0, 0.0)]
    assert workers._slots[3].failures == 7 and workers._slots[3].not_before > time.monotonic() + 50
    workers.stop()


def test_idle_jobs_are_swept_further_apart_and_active_ones_every_poll():
    """With idle_poll_max, a job that keeps finding nothing is left out of more and more sweeps;
    one that finds work is swept at every poll; a wake-up by name runs a quiet job at once."""
    runs: dict[int, int] = {1: 0, 2: 0}
    lock = threading.Lock()

    def job(key: int) -> Job:
        def run(session) -> bool:
            with lock:
                runs[key] += 1
            return key == 1  # 1 always finds work, 2 never does

        return Job(key=key, open_session=FakeSession, run=run)

    workers = MailboxWorkers("t", lambda: [job(1), job(2)], workers=2, poll_interval=0.05, idle_poll_max=10.0,
                             release_sessions=True)
    workers.start()
    try:
        time.sleep(1.5)
        with lock:
            active, quiet = runs[1], runs[2]
        # 0.05 s polls for 1.5 s: the active job ran at nearly every poll, the quiet one only at
        # 0, 0.05, 0.2, 0.65 s (its sweeps three times further apart each time)
        assert active >= 10, runs
        assert quiet <= 5, runs
        assert workers.most_active(5) == [1]
        workers.wake(2)
        deadline = time.monotonic() + 5
        while runs[2] == quiet and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runs[2] == quiet + 1  # woken by name: ran although not due
    finally:
        workers.stop()


def test_without_idle_poll_max_every_poll_runs_every_job():
    runs: dict[int, int] = {1: 0}

    def run(session) -> bool:
        runs[1] += 1
        return False

    workers = MailboxWorkers("t", lambda: [Job(key=1, open_session=FakeSession, run=run)], workers=1,
                             poll_interval=0.05)
    workers.start()
    try:
        time.sleep(1.0)
    finally:
        workers.stop()
    assert runs[1] >= 8


def test_released_sessions_are_closed_after_each_run_and_busy_is_no_error():
    from mailrepl.shared.errors import ServerBusy

    sessions: list[FakeSession] = []
    errors: list[BaseException] = []
    calls = {"n": 0}

    def open_session() -> FakeSession:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ServerBusy("all taken", back_off=0.05)
        sessions.append(FakeSession())
        return sessions[-1]

    workers = MailboxWorkers("t", lambda: [Job(key=1, open_session=open_session, run=lambda s: True)],
                             workers=1, poll_interval=0.05, release_sessions=True,
                             on_error=lambda k, e: errors.append(e))
    workers.start()
    try:
        deadline = time.monotonic() + 5
        while len(sessions) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        workers.stop()
    assert len(sessions) >= 3 and all(s.closed for s in sessions)
    assert errors == []  # waiting for a connection is not an error of the mailbox


def test_a_job_that_just_found_work_is_swept_at_every_poll_for_the_active_window():
    """Mail comes in bursts: a job whose last run found nothing but which found work moments ago
    stays in every sweep for ``active_window`` seconds; after that its sweeps grow apart."""
    runs: list[float] = []
    found = [True]

    def run(session) -> bool:
        runs.append(time.monotonic())
        was, found[0] = found[0], False
        return was  # work on the first run only

    workers = MailboxWorkers("t", lambda: [Job(key=1, open_session=FakeSession, run=run)], workers=1,
                             poll_interval=0.05, idle_poll_max=10.0, active_window=0.6, release_sessions=True)
    workers.start()
    try:
        time.sleep(1.6)
    finally:
        workers.stop()
    start = runs[0]
    within = [t for t in runs if t - start < 0.55]
    after = [t for t in runs if t - start >= 0.7]
    assert len(within) >= 6, runs  # every 0.05 s poll while recently active (about 11)
    assert len(after) <= 4, runs  # then 0.05, 0.15, 0.45 s apart: at most a few in 0.9 s


def test_a_stream_of_wake_ups_does_not_starve_the_swept_mailboxes():
    """Ten mailboxes are woken by name again and again (push), faster than one thread can run
    them; the ten others are only swept by the poll. Once the sweep has waited a poll interval,
    woken and swept jobs take turns: every swept mailbox runs within seconds, not never."""
    ran: dict[int, list[float]] = {k: [] for k in range(20)}
    stop = threading.Event()

    def job(key: int) -> Job:
        def run(session) -> bool:
            ran[key].append(time.monotonic())
            time.sleep(0.01)
            return True
        return Job(key=key, open_session=FakeSession, run=run)

    jobs = [job(k) for k in range(20)]
    workers = MailboxWorkers("t", lambda: list(jobs), workers=1, poll_interval=0.2, idle_poll_max=60)

    def pusher() -> None:
        while not stop.is_set():
            for k in range(10):
                workers.wake(k)
            time.sleep(0.002)

    workers.start()
    started = time.monotonic()
    t = threading.Thread(target=pusher)
    t.start()
    try:
        time.sleep(0.5)  # the first pass has run every job once
        since = time.monotonic()
        deadline = since + 10
        while time.monotonic() < deadline and not all(any(x > since for x in ran[k]) for k in range(10, 20)):
            time.sleep(0.05)
        late = [k for k in range(10, 20) if not any(x > since for x in ran[k])]
        assert late == [], f"swept mailboxes starved behind the wake-ups: {late}"
        assert all(any(x > since for x in ran[k]) for k in range(10)), "the woken ones kept running too"
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        t.join(5)
        workers.stop()


def test_wake_ups_by_name_reuse_the_job_list_and_an_unknown_name_lists_again():
    """Listing the jobs reads every mailbox: a wake-up per pushed change must not do it each
    time. Within a poll interval, wake-ups of listed jobs reuse the list; a wake-up naming a job
    the list lacks (just protected) lists again and runs it at once."""
    listed = []
    ran: list[int] = []
    keys = list(range(5))

    def list_jobs() -> list[Job]:
        listed.append(time.monotonic())
        return [Job(key=k, open_session=FakeSession, run=lambda session, k=k: ran.append(k)) for k in list(keys)]

    workers = MailboxWorkers("t", list_jobs, workers=2, poll_interval=1.0)
    workers.start()
    try:
        time.sleep(0.3)
        before = len(listed)
        for _ in range(100):
            for k in range(5):
                workers.wake(k)
            time.sleep(0.005)
        assert len(listed) - before <= 2, f"{len(listed) - before} listings for 500 wake-ups within a poll interval"
        assert ran.count(3) >= 2  # and the woken jobs ran
        keys.append(99)
        woken_at = time.monotonic()
        workers.wake(99)
        deadline = woken_at + 5
        while 99 not in ran and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 99 in ran and time.monotonic() - woken_at < 0.5
    finally:
        workers.stop()


def test_a_sweep_leaves_out_a_job_a_wake_up_ran_within_the_poll_interval():
    """With ``sweep_skips_woken`` (push at the source), a mailbox a wake-up by name ran moments
    ago is not swept again by the next poll; one woken longer ago, or only ever swept, is; a
    wake of all (an admin action) runs every job."""
    workers = MailboxWorkers("t", list, workers=1, poll_interval=5.0, sweep_skips_woken=True)
    plain = MailboxWorkers("t", list, workers=1, poll_interval=5.0)
    try:
        now = time.monotonic()
        by_key = {k: Job(key=k, open_session=FakeSession, run=lambda s: True) for k in (1, 2, 3, 4)}
        for w in (workers, plain):
            w._slots[1] = _Slot(woken_run=now - 1.0)  # woken and run a second ago
            w._slots[2] = _Slot(woken_run=now - 6.0)  # more than a poll interval ago
            w._slots[3] = _Slot()  # only ever swept
        assert sorted(workers._sweep_order(by_key, {}, now, False)) == [2, 3, 4]
        assert sorted(workers._sweep_order(by_key, {}, now, True)) == [1, 2, 3, 4]
        assert sorted(plain._sweep_order(by_key, {}, now, False)) == [1, 2, 3, 4]
    finally:
        workers.stop()
        plain.stop()


def test_a_job_woken_once_is_swept_again_within_two_poll_intervals():
    """A wake-up stamps the run it starts as woken, and a change whose wake-up was lost is still
    found by a sweep: the skipped job runs again within two poll intervals of its woken run."""
    ran: list[float] = []
    workers = MailboxWorkers("t", lambda: [Job(key=1, open_session=FakeSession, run=lambda s: ran.append(
        time.monotonic()) or True)], workers=1, poll_interval=0.2, sweep_skips_woken=True)
    workers.start()
    try:
        time.sleep(0.1)  # the first sweep ran it
        woken_at = time.monotonic()
        workers.wake(1)
        deadline = time.monotonic() + 5
        while not any(t >= woken_at for t in ran) and time.monotonic() < deadline:
            time.sleep(0.005)
        first = next(t for t in ran if t >= woken_at)
        assert workers._slots[1].woken_run >= woken_at  # the run was stamped as woken
        while not any(t > first for t in ran) and time.monotonic() < deadline:
            time.sleep(0.005)
        later = [t for t in ran if t > first]
        assert later and later[0] - first <= 2 * 0.2 + 0.1, (first, ran)
    finally:
        workers.stop()


def test_a_job_listed_as_not_swept_runs_only_when_woken_and_its_wake_up_needs_no_listing():
    """The recovery gateway lists a mailbox with nothing to replay as not swept: the poll leaves
    it alone, and the wake-up of its next received batch runs it from the list it has."""
    listed = []
    ran: list[int] = []

    def list_jobs() -> list[Job]:
        listed.append(time.monotonic())
        return [Job(key=k, open_session=FakeSession, run=lambda session, k=k: ran.append(k), swept=k == 0)
                for k in range(3)]

    workers = MailboxWorkers("t", list_jobs, workers=2, poll_interval=0.5)
    workers.start()
    try:
        time.sleep(1.2)  # two polls and more
        assert ran.count(0) >= 2 and 1 not in ran and 2 not in ran
        time.sleep(0.1)
        before, woken_at = len(listed), time.monotonic()
        workers.wake(2)
        deadline = woken_at + 5
        while 2 not in ran and time.monotonic() < deadline:
            time.sleep(0.005)
        assert 2 in ran and 1 not in ran
        if time.monotonic() - listed[-1] > 0.05:  # unless the poll's listing fell in between
            assert len(listed) == before
    finally:
        workers.stop()


def test_a_sweep_runs_the_jobs_with_work_before_the_recently_active_ones_that_only_look():
    """A recovery gateway seeding thousands of mailboxes: the copies already applied come due for
    their standby check while others still wait to be applied. The sweep runs those with work
    first, however recently the others were active (they would otherwise hold the backlog behind
    thousands of quick looks)."""
    order: list[int] = []
    gate = threading.Event()

    def job(key: int, has_work: bool) -> Job:
        def run(session) -> bool:
            gate.wait(5)
            order.append(key)
            return has_work
        return Job(key=key, open_session=FakeSession, run=run, has_work=has_work)

    jobs = [job(k, has_work=k >= 3) for k in range(6)]
    workers = MailboxWorkers("t", lambda: list(jobs), workers=1, poll_interval=30, idle_poll_max=60)
    now = time.monotonic()
    for k in range(3):  # the looking-only jobs had work a moment ago, the others never ran
        workers._slots[k] = _Slot(last_active=now - k, ran_at=now - k)
    assert workers._sweep_order({j.key: j for j in jobs}, {}, now, forced=False)[:3] == [3, 4, 5]
    workers.start()
    try:
        gate.set()
        deadline = time.monotonic() + 5
        while len(order) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(order[:3]) == [3, 4, 5] and order[3:] == [0, 1, 2]
    finally:
        workers.stop()


def test_a_sweep_starts_at_most_sweep_rate_quiet_jobs_a_second_but_every_job_with_work():
    """Thousands of quiet mailboxes: their polls (logins) are a bounded trickle, the longest
    waiting first, while every mailbox with known work (seeding, a replica to apply) runs."""
    jobs, runs, lock = recording_jobs([*range(40), *range(100, 110)], found=lambda k: k >= 100,
                                      has_work=lambda k: k >= 100)
    workers = MailboxWorkers("t", lambda: list(jobs), workers=2, poll_interval=0.1, idle_poll_max=0.1,
                             sweep_rate=5.0)
    workers.start()
    try:
        time.sleep(2.0)
    finally:
        workers.stop()
    with lock:
        quiet = [k for k in runs if k < 100]
        busy = {k for k in runs if k >= 100}
    # 5 saved up at the start, then 5 a second: about 15 in 2 s (every quiet job was due at every sweep)
    assert 8 <= len(quiet) <= 18, len(quiet)
    assert busy == set(range(100, 110)), "jobs with work are not held by the rate"
    assert len(set(quiet)) == len(quiet), "the longest waiting go first: none polled twice before the others"


def test_the_recently_active_do_not_starve_a_quiet_job_whose_idle_poll_max_is_up():
    """Under ``sweep_rate``, more recently active mailboxes than the rate can poll at every sweep
    (mail arriving at many of them): a quiet mailbox is still polled about every
    ``idle_poll_max``, not left out until the others go quiet."""
    # key 0 is quiet; the others find mail at every look
    jobs, runs, lock = recording_jobs(range(20), found=lambda k: k != 0)
    # 20 a poll wanted every 0.05 s (400 a second) against 20 a second allowed
    workers = MailboxWorkers("t", lambda: list(jobs), workers=2, poll_interval=0.05, idle_poll_max=0.4,
                             active_window=60.0, sweep_rate=20.0)
    workers.start()
    try:
        time.sleep(3.0)
    finally:
        workers.stop()
    with lock:
        quiet = runs.count(0)
        active = len(runs) - quiet
    assert quiet >= 4, f"the quiet job ran {quiet} times in 3 s with idle_poll_max 0.4 s"
    assert active > 3 * quiet, "the rest of the allowance still goes to the recently active"


def test_the_sweep_ranks_a_job_whose_idle_poll_max_is_up_before_the_recently_active():
    workers = MailboxWorkers("t", lambda: [], poll_interval=5.0, idle_poll_max=120.0)
    jobs = {k: Job(key=k, open_session=FakeSession, run=lambda s: None) for k in range(4)}
    now = time.monotonic()
    workers._slots[0] = _Slot(last_active=now - 1, ran_at=now - 1)  # active, polled a moment ago
    workers._slots[1] = _Slot(quiet=5, next_sweep=now - 1, ran_at=now - 121)  # quiet, its bound is up
    workers._slots[2] = _Slot(quiet=2, next_sweep=now - 2, ran_at=now - 17)  # quiet, due, within its bound
    workers._slots[3] = _Slot(last_active=now - 200, quiet=5, next_sweep=now - 0.5, ran_at=now - 130)
    assert workers._sweep_order(jobs, {}, now, forced=False) == [3, 1, 0, 2]


def test_the_rate_allowance_is_saved_up_for_two_poll_intervals_at_most():
    workers = MailboxWorkers("t", lambda: [], poll_interval=1.0, sweep_rate=3.0)
    quiet = {k: Job(key=k, open_session=FakeSession, run=lambda s: None) for k in range(50)}
    now = time.monotonic()
    first = workers._within_rate(list(quiet), quiet, now)
    assert len(first) == 3  # one poll interval's worth to start with
    later = workers._within_rate(list(quiet), quiet, now + 100)  # a long pause: capped, not 300
    assert len(later) == 6
    assert workers._within_rate(list(quiet), quiet, now + 100) == []
