"""Cutover of every mailbox of a server at once: each mailbox is cut over exactly once (one
history row per step), only those with something to drain or a view behind touch the standby,
a mailbox whose standby cannot be reached is reported and stays cutting over while the others
proceed, and asking again finishes it without touching the others. The state store is written
in chunks (more mailboxes here than one chunk holds)."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import func, select, update

from mailrepl.recovery.cutover import WRITE_CHUNK, CutoverService
from mailrepl.recovery.site import KeyedLocks, find_replicas
from mailrepl.shared.errors import IllegalTransition, ServerUnavailable
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Mailbox, Replica, SiteTransition
from mailrepl.shared.store.chunks import IN_CHUNK

N = max(WRITE_CHUNK, IN_CHUNK) * 2 + 37
STALE = {7, 500, 501, 999, N - 1}  # view behind: drained and read on the standby
UNREACHABLE = {500, N - 1}  # of those, the standby cannot be reached


class FakeSession:
    def close(self) -> None:
        pass


class FakeReplay:
    """Applies everything received (the drain), counting the drains per replica."""

    def __init__(self, store) -> None:
        self.store, self.drains, self._lock = store, Counter(), threading.Lock()

    def replay(self, rid: int, session) -> None:
        with self._lock:
            self.drains[rid] += 1
        with self.store.tx() as s:
            s.execute(update(Replica).where(Replica.id == rid).values(applied_seq=Replica.received_seq))


class FakeView:
    """Brings the view up to date: the mailbox row of the standby copy, at the applied sequence."""

    def __init__(self, store) -> None:
        self.store = store

    def refresh(self, rid: int, session) -> int:
        with self.store.tx() as s:
            rep = s.get(Replica, rid)
            if s.scalar(select(Mailbox.id).where(Mailbox.server == rep.server, Mailbox.address == rep.address)) is None:
                s.add(Mailbox(server=rep.server, address=rep.address, protected=False, phase="idle",
                              active_site="primary", site_state="replicating"))
            rep.view_seq = rep.applied_seq
        return 1


def _populate(store) -> None:
    with store.tx() as s:
        for i in range(N):
            stale = i in STALE
            s.add(Replica(source_id="hq", server="primary", address=f"u{i:05d}@example.org", target="standby",
                          received_seq=5 + (i % 3 if stale else 0), applied_seq=5, view_seq=None if stale else 5))
            if not stale:  # the standby view the replay workers kept current
                s.add(Mailbox(server="primary", address=f"u{i:05d}@example.org", protected=False, phase="idle",
                              active_site="primary", site_state="replicating"))
        s.add(Replica(source_id="hq", server="other", address="u00001@example.org", target="standby",
                      received_seq=3, applied_seq=3, view_seq=3))
        s.add(Mailbox(server="other", address="u00001@example.org", protected=False, phase="idle",
                      active_site="primary", site_state="replicating"))


@pytest.fixture
def setup(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/r.sqlite")
    store.migrate()
    _populate(store)
    replay, opened, down = FakeReplay(store), Counter(), set(UNREACHABLE)

    def open_standby(rep):
        opened[rep.address] += 1
        if int(rep.address[1:6]) in down:
            raise ServerUnavailable("standby unreachable")
        return FakeSession()

    service = CutoverService(store, replay, open_standby, KeyedLocks(), view=FakeView(store))
    with store.read() as s:
        ids = [rep.id for rep in find_replicas(s, server="primary", all_of_server=True)]
    return store, service, replay, opened, down, ids


def _transitions(store) -> Counter:
    with store.read() as s:
        return Counter(s.execute(select(SiteTransition.replica_id, SiteTransition.before, SiteTransition.after,
                                        SiteTransition.actor)).all())


def test_cutover_of_all_cuts_each_over_once_and_reports_failures_per_mailbox(setup):
    store, service, replay, opened, down, ids = setup
    assert len(ids) == N
    results = service.cutover(ids)
    assert [r["address"] for r in results] == [f"u{i:05d}@example.org" for i in range(N)]  # in order
    by_status = Counter((r["state"], r["status"]) for r in results)
    assert by_status == {("active-at-dr", "ok"): N - len(UNREACHABLE), ("cutting-over", "error"): len(UNREACHABLE)}
    for i, r in enumerate(results):
        assert r["standby_read"] is (i in STALE), r
        if i in UNREACHABLE:
            assert r["error"] == "standby unreachable" and r["note"] is None
        else:
            assert r["note"] == "cut over" and r["replay_queue"] == 0 and "error" not in r
    # the standby was touched only where something was to drain or the view was behind
    assert set(opened) == {f"u{i:05d}@example.org" for i in STALE}
    assert set(replay.drains) == {ids[i] for i in STALE - UNREACHABLE}
    assert all(n == 1 for n in replay.drains.values())
    # one history row per step and mailbox: cutover for every one, drained for those cut over
    steps = _transitions(store)
    assert all(n == 1 for n in steps.values())
    assert Counter((before, after) for _, before, after, _ in steps) == {
        ("replicating", "cutting-over"): N, ("cutting-over", "active-at-dr"): N - len(UNREACHABLE)}
    with store.read() as s:
        reps = {r.id: r for r in s.scalars(select(Replica))}
        views = {(m.server, m.address): m for m in s.scalars(select(Mailbox))}
    for i, rid in enumerate(ids):
        rep, view = reps[rid], views.get(("primary", reps[rid].address))
        if i in UNREACHABLE:
            assert rep.site_state == "cutting-over" and rep.error == "cutover: standby unreachable"
            assert rep.cutover_seq is None
        else:
            assert rep.site_state == "active-at-dr" and rep.error is None and rep.cutover_seq == rep.applied_seq
            assert rep.site_since is not None
            assert (view.site_state, view.protected, view.active_site) == ("active-at-dr", True, "dr")
    other = next(r for r in reps.values() if r.server == "other")
    assert other.site_state == "replicating" and views[("other", other.address)].site_state == "replicating"

    # the standby back: asking again finishes the two, the others stay as they are
    down.clear()
    again = service.cutover(ids)
    assert Counter((r["state"], r["status"]) for r in again) == {("active-at-dr", "ok"): N}
    assert {r["note"] for i, r in enumerate(again) if i not in UNREACHABLE} == {"already active at DR"}
    assert [again[i]["note"] for i in sorted(UNREACHABLE)] == ["cut over"] * len(UNREACHABLE)
    steps = _transitions(store)
    assert all(n == 1 for n in steps.values())
    assert Counter((before, after) for _, before, after, _ in steps) == {
        ("replicating", "cutting-over"): N, ("cutting-over", "active-at-dr"): N}
    assert all(replay.drains[ids[i]] == 1 for i in STALE)
    with store.read() as s:
        assert s.scalar(select(func.count()).where(Replica.server == "primary", Replica.site_state == "active-at-dr",
                                                   Replica.error.is_(None))) == N


def test_a_mailbox_that_may_not_cut_over_stops_the_request_before_anything_changes(setup):
    store, service, replay, opened, down, ids = setup
    with store.tx() as s:
        s.get(Replica, ids[N // 2]).site_state = "failing-back"
    with pytest.raises(IllegalTransition):
        service.cutover(ids)
    assert not _transitions(store) and not opened and not replay.drains
    with store.read() as s:
        states = Counter(s.scalars(select(Replica.site_state)))
    assert states == {"replicating": N, "failing-back": 1}
