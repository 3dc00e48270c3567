"""A small pool that runs per-mailbox work (capture cycles, replay) on worker threads.

Policy kept here, not in adapters: one job per mailbox at a time, a cached adapter session per
mailbox (reopened after a failure), exponential back-off per mailbox after errors, and a wake-up
event so that new work (a received batch, an admin toggle) starts at once instead of at the
next poll. Jobs of one ``group`` (the mail server their mailboxes are on) recover together: when
a job that had failed succeeds, the server is back, and the others of its group waiting out a
back-off run at once instead of up to ``back_off_max`` later. A wake-up names one mailbox (a push notification of its change) or none (every
mailbox): with hundreds of mailboxes, a change in one must not start a cycle of all of them.

Two queues feed the threads: mailboxes woken by name, in the order they were woken, go before
the poll's sweep of every mailbox; a mailbox already waiting in the sweep moves up when it is
woken. A sweep of hundreds of idle mailboxes therefore never delays the one that has a change;
and a stream of wake-ups never starves the swept ones: once the sweep's next job has waited a
poll interval, woken and swept jobs take turns (a mailbox without a push connection is captured
within about a poll interval plus its turn; one whose wake-up was missed within two with
``sweep_skips_woken``, below, as the push watchers promise).

Idle cost at scale (``idle_poll_max``): a job whose run returns a false value found nothing to
do; the periodic sweep then leaves it out for longer after each such run (``poll_interval``
times 3 per quiet run, at most ``idle_poll_max``), and one that found work is swept every
``poll_interval`` again, and keeps being so for ``active_window`` seconds after its last work
(mail comes in bursts: a mailbox that just had a change is likely to have the next soon). The
sweep takes the jobs known to have work first (``Job.has_work``: a replica with received changes
goes before the standby checks of idle copies, which would otherwise hold a backlog behind
thousands of quick looks), then those not run for ``idle_poll_max`` (their bound is up: the
recently active, swept at every poll, must not take every turn of ``sweep_rate`` meanwhile),
then the most recently active, then the quiet ones longest due; with
``sweep_rate`` at most that many of the jobs without known work start a second (each is most
often a login), the others staying due for a later sweep. A wake-up (by name, or
of all after an admin action) always runs the job. ``most_active(n)`` names the mailboxes that
had work most recently (the ones worth a push connection). With ``release_sessions`` a job's
session is closed after each run (a pooled adapter keeps the connection for the next one, within
its bound) instead of being kept per mailbox.

With ``sweep_skips_woken`` (the source gateway, whose mailboxes are woken by push), the poll's
sweep leaves out a job that a wake-up by name ran within the last poll interval: that run read
the server's state moments ago, and a sweep run of it would most often find nothing. A change
whose wake-up was lost is then captured within about two poll intervals instead of one; with
hundreds of mailboxes active and woken, this halves the cycles or better.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Hashable

from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.errors import MailreplError, ServerBusy, ServerUnavailable

__all__ = ["MailboxWorkers", "Job"]

log = logging.getLogger("mailrepl.workers")

IDLE_GROWTH = 3  # a quiet job's sweep interval grows by this factor per quiet run (up to idle_poll_max)
ACTIVE_WINDOW = 120.0  # s after a job's last work during which it is swept at every poll
TRANSIENT_FAILURES = 3  # a server-unavailable error is recorded on the mailbox from this many in a row


@dataclass(frozen=True)
class Job:
    key: Hashable  # mailbox id / replica id
    open_session: Callable[[], MailboxSession]
    run: Callable[[MailboxSession], object]
    group: Hashable | None = None  # the server: its jobs' back-offs end together when it is back
    # the periodic sweep runs it; False: only a wake-up by name does (listed anyway, so that the
    # wake-up of a job with nothing to do at the last listing needs no new listing)
    swept: bool = True
    # known to have work (a replica with received changes to apply): ahead of the sweep's jobs
    # that only look (a standby check of an idle copy), whatever their recent activity
    has_work: bool = False


@dataclass
class _Slot:
    session: MailboxSession | None = None
    busy: bool = False  # queued or running
    failures: int = 0
    not_before: float = 0.0
    group: Hashable | None = None
    quiet: int = 0  # runs in a row that found nothing to do
    next_sweep: float = 0.0  # the periodic sweep leaves the job out until then (idle_poll_max)
    last_active: float = 0.0  # when a run last found work
    ran_at: float = float("-inf")  # when a run last ended well (swept or woken)
    woken_run: float = float("-inf")  # when a run woken by name last started


class MailboxWorkers:
    """Runs ``list_jobs()`` every ``poll_interval`` (or when woken) on ``workers`` threads."""

    def __init__(
        self,
        name: str,
        list_jobs: Callable[[], list[Job]],
        *,
        workers: int = 4,
        poll_interval: float = 2.0,
        on_error: Callable[[Hashable, BaseException], None] | None = None,
        back_off_max: float = 60.0,
        idle_poll_max: float | None = None,
        active_window: float = ACTIVE_WINDOW,
        release_sessions: bool = False,
        sweep_skips_woken: bool = False,
        sweep_rate: float | None = None,
    ) -> None:
        self.name = name
        # at most this many swept jobs without known work queued per second, on average (None: all due)
        self.sweep_rate = sweep_rate
        self._allowance = sweep_rate * max(poll_interval, 1.0) if sweep_rate else 0.0
        self._allowed_at = time.monotonic()
        self.sweep_skips_woken = sweep_skips_woken
        self.idle_poll_max = idle_poll_max
        self.active_window = active_window
        self.release_sessions = release_sessions
        self.list_jobs = list_jobs
        self.poll_interval = poll_interval
        self.on_error = on_error
        self.back_off_max = back_off_max
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots: dict[Hashable, _Slot] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # keys to run at the next pass, in the order they were woken: True if woken by name,
        # False if a sweep found them running (they run again, in the sweep, when that run ends)
        self._woken: dict[Hashable, bool] = {}
        self._urgent: OrderedDict[Hashable, Job] = OrderedDict()  # queued: woken by name, first woken first
        self._sweep: OrderedDict[Hashable, Job] = OrderedDict()  # queued: by the poll or a wake-up of all
        self._swept_at: dict[Hashable, float] = {}  # when each job in the sweep was queued
        self._sweep_turn = False  # woken and overdue swept jobs alternate
        self._wake_all = True
        self._forced = True  # the pending sweep was asked for (wake of all), not the poll's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-loop", daemon=True)
        self._thread.start()

    def wake(self, key: Hashable | None = None) -> None:
        """Start due work now: of every job (no ``key``), or of the job of ``key`` only."""
        with self._lock:
            if key is None:
                self._wake_all = self._forced = True
            else:
                self._woken[key] = True
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for slot in self._slots.values():
                if slot.session is not None:
                    slot.session.close()
            self._slots.clear()

    def take_session(self, key: Hashable) -> MailboxSession | None:
        """Hand over the cached session of ``key`` while no job of it runs (the caller owns and
        closes it; the next job opens a new one), or None."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.busy or slot.session is None:
                return None
            session, slot.session = slot.session, None
            return session

    def most_active(self, n: int) -> list[Hashable]:
        """The ``n`` keys whose jobs found work most recently (never-active ones last)."""
        with self._lock:
            ranked = sorted(((s.last_active, k) for k, s in self._slots.items() if s.last_active > 0.0),
                            key=lambda t: t[0], reverse=True)
        return [k for _, k in ranked[:n]]

    def forget(self, key: Hashable) -> None:
        """Drop the cached session of ``key`` (e.g. after protection was turned off)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and not slot.busy and slot.session is not None:
                slot.session.close()
                slot.session = None

    def _loop(self) -> None:
        next_poll = time.monotonic() + self.poll_interval
        by_key: dict[Hashable, Job] = {}
        listed_at = float("-inf")
        while not self._stop.is_set():
            # the jobs are listed for a sweep, and otherwise at most once a poll interval: a
            # wake-up by name (one per change pushed) reuses the last list unless it names a job
            # that list does not have
            with self._lock:
                relist = (self._wake_all or time.monotonic() - listed_at >= self.poll_interval
                          or any(k not in by_key for k in self._woken))
            if relist:
                try:
                    by_key = {job.key: job for job in self.list_jobs()}
                    listed_at = time.monotonic()
                except Exception:  # the store may be briefly unavailable; try again next tick
                    log.exception("%s: listing work failed", self.name)
                    by_key = {}
            now = time.monotonic()
            with self._lock:
                run_all, forced, woken = self._wake_all, self._forced, self._woken
                self._wake_all, self._forced, self._woken = False, False, {}
                order = [k for k, urgent in woken.items() if urgent and k in by_key]
                order += [k for k, urgent in woken.items() if not urgent and k in by_key]
                if run_all:
                    order += self._sweep_order(by_key, woken, now, forced)
                for key in order:
                    self._queue(by_key[key], woken.get(key, False), now)
            # the poll comes every poll_interval whatever the wake-ups in between: a stream of
            # them must not put off the sweep of the mailboxes nobody wakes
            self._wake.wait(max(0.0, next_poll - time.monotonic()))
            self._wake.clear()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval
                with self._lock:
                    self._wake_all = True  # the poll: every job

    def _sweep_order(self, by_key: dict, woken: dict, now: float, forced: bool) -> list[Hashable]:
        """The keys a sweep queues (lock held): all of them, or with ``idle_poll_max`` those due,
        the most recently active first."""
        keys = [k for k in by_key if k not in woken and by_key[k].swept]
        slots = self._slots
        if self.sweep_skips_woken and not forced:
            ran = now - self.poll_interval
            keys = [k for k in keys if k not in slots or slots[k].woken_run < ran]
        if self.idle_poll_max is not None and not forced:
            keys = [k for k in keys if k not in slots or slots[k].next_sweep <= now]
        if self.idle_poll_max is None and self.sweep_rate is None:
            return keys
        return self._within_rate(sorted(keys, key=lambda k: self._sweep_rank(by_key[k], now)), by_key, now)

    def _sweep_rank(self, job: Job, now: float) -> tuple:
        """Jobs with known work first; then those not run for ``idle_poll_max`` (or never), the
        longest waiting first: their bound is up, and under ``sweep_rate`` the recently active
        must not take every turn while a quiet mailbox waits on and on; then those active within
        ``active_window``, the most recent first; then the quiet ones, the longest due first."""
        slot = self._slots.get(job.key)
        if job.has_work:
            return (0, 0.0)
        if slot is None:
            return (1, float("-inf"))
        if self.idle_poll_max is not None and now - slot.ran_at >= self.idle_poll_max:
            return (1, slot.ran_at)
        if now - slot.last_active <= self.active_window:
            return (2, -slot.last_active)
        return (3, slot.next_sweep)

    def _within_rate(self, keys: list[Hashable], by_key: dict, now: float) -> list[Hashable]:
        """``keys`` (ranked) cut to the sweep's allowance: ``sweep_rate`` per second since the last
        sweep, saved up for at most two poll intervals. Jobs with known work always go; the
        others left out stay due and go first in a later sweep (lock held)."""
        if self.sweep_rate is None:
            return keys
        cap = self.sweep_rate * max(self.poll_interval, 1.0) * 2
        self._allowance = min(cap, self._allowance + (now - self._allowed_at) * self.sweep_rate)
        self._allowed_at = now
        out = []
        for k in keys:
            if not by_key[k].has_work:
                if self._allowance < 1.0:
                    continue
                self._allowance -= 1.0
            out.append(k)
        return out

    def _group_back(self, group: Hashable) -> None:
        """A job of ``group`` succeeded after failing: its server is back; the group's waiting jobs
        run now, and their back-off starts again from its first step (their failures were that
        server's outage: kept, a server that flaps would leave every job at the longest back-off)."""
        with self._lock:
            waiting = [s for s in self._slots.values() if s.group == group and s.not_before > 0.0]
            for s in waiting:
                s.not_before, s.failures = 0.0, 0
            if waiting:
                self._wake_all = True
        if waiting:
            log.info("%s: %s is back: %d job(s) no longer wait out their back-off", self.name, group, len(waiting))
            self._wake.set()

    def _queue(self, job: Job, urgent: bool, now: float) -> None:
        """Queue ``job`` (lock held): woken ones ahead of the sweep; one entry per mailbox."""
        slot = self._slots.setdefault(job.key, _Slot())
        slot.group = job.group
        if slot.busy:
            if job.key in self._sweep:
                if urgent:  # woken while waiting in the sweep: moves up
                    self._urgent[job.key] = self._sweep.pop(job.key)
                    self._swept_at.pop(job.key, None)
            elif job.key not in self._urgent:  # running: runs again when this run ends
                self._woken[job.key] = urgent or self._woken.get(job.key, False)
            return
        if slot.not_before > now:
            return
        slot.busy = True
        if urgent:
            self._urgent[job.key] = job
        else:
            self._sweep[job.key] = job
            self._swept_at[job.key] = now
        self._pool.submit(self._next)

    def _next(self) -> None:
        """One pool task per queued job: runs the first woken one, else the sweep's next; but
        once the sweep's next has waited ``poll_interval``, woken and swept jobs take turns, so
        that a steady stream of wake-ups never starves the mailboxes that are only swept."""
        with self._lock:
            queue = self._urgent if self._urgent else self._sweep
            if self._urgent and self._sweep:
                head = next(iter(self._sweep))
                if time.monotonic() - self._swept_at.get(head, 0.0) >= self.poll_interval:
                    self._sweep_turn = not self._sweep_turn
                    if self._sweep_turn:
                        queue = self._sweep
            if not queue:
                return
            woken = queue is self._urgent
            key, job = queue.popitem(last=False)
            self._swept_at.pop(key, None)
            slot = self._slots[key]
            if woken:
                slot.woken_run = time.monotonic()
        self._run(job, slot)

    @staticmethod
    def _drop_session(slot: _Slot) -> None:
        if slot.session is not None:
            try:
                slot.session.close()
            except Exception as exc:  # noqa: BLE001 - it is being thrown away
                log.debug("closing a session: %s", exc)
            slot.session = None

    def _note_result(self, slot: _Slot, found: bool) -> None:
        """Adaptive sweep (``idle_poll_max``): back to every poll after work, further apart when quiet."""
        now = time.monotonic()
        slot.ran_at = now
        if self.idle_poll_max is None:
            return
        if found:
            slot.quiet, slot.last_active, slot.next_sweep = 0, now, 0.0
            return
        if slot.last_active and now - slot.last_active < self.active_window:
            slot.next_sweep = 0.0  # recently active: still swept at every poll
            return
        slot.quiet = min(slot.quiet + 1, 12)
        slot.next_sweep = now + min(self.idle_poll_max, self.poll_interval * IDLE_GROWTH ** (slot.quiet - 1))

    def _run(self, job: Job, slot: _Slot) -> None:
        try:
            if slot.session is None:
                slot.session = job.open_session()
            found = job.run(slot.session)
            if self.release_sessions:
                session, slot.session = slot.session, None
                session.close()
            self._note_result(slot, bool(found))
            recovered = slot.failures > 0
            slot.failures = 0
            slot.not_before = 0.0
            if recovered and job.group is not None:
                self._group_back(job.group)
        except ServerBusy as exc:  # the server's connections are all taken: wait, not a failure
            slot.not_before = time.monotonic() + exc.back_off * (1.0 + random.random())
            self._drop_session(slot)
            log.debug("%s: job %s waits: %s", self.name, job.key, exc)
        except BaseException as exc:  # noqa: BLE001 - recorded and retried, never lost
            slot.failures += 1
            retryable = isinstance(exc, MailreplError) and exc.retryable
            base = getattr(exc, "back_off", 0.0) or 1.0
            delay = min(self.back_off_max, base * (2 ** min(slot.failures - 1, 6)))
            if not retryable:
                delay = max(delay, 5.0)
            slot.not_before = time.monotonic() + delay
            self._drop_session(slot)
            if not isinstance(exc, MailreplError):
                log.exception("%s: job %s failed", self.name, job.key)
            else:
                log.warning("%s: job %s: %s (retry in %.1fs)", self.name, job.key, exc, delay)
            # a connection dropped or refused now and then is the server's load, not the mailbox's
            # fault: shown once it repeats (a server that stays down is shown within seconds)
            transient = isinstance(exc, ServerUnavailable) and slot.failures < TRANSIENT_FAILURES
            if self.on_error is not None and not transient:
                try:
                    self.on_error(job.key, exc)
                except Exception:
                    log.exception("%s: recording an error failed", self.name)
        finally:
            with self._lock:
                slot.busy = False
                if job.key in self._woken:
                    self._wake.set()
