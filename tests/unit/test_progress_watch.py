"""Waiting progress queries: the recovery gateway answers a query that names its last token once a
replay pass commits (with only the replicas applied since), and the source gateway's progress
watcher follows the replay through them, moving positions forward only."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import select, update

from mailrepl.gateway import shipper as shipper_module
from mailrepl.shared.engines.progress_signal import ProgressSignal, Since
from mailrepl.shared.protocol.wire import Ack, SegmentResult
from mailrepl.shared.errors import WireError
from mailrepl.shared.store.models import Mailbox, Replica
from tests.unit.test_pipeline_memory import TOKEN, Pipeline, _msg

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def seeded(p: Pipeline, address: str, count: int) -> int:
    """``count`` messages captured and shipped for ``address`` (not yet applied); its replica id."""
    with p.src.tx() as s:
        if s.scalar(select(Mailbox).where(Mailbox.address == address)) is None:
            s.add(Mailbox(server="primary", address=address, protected=True, phase="seeding"))
    for i in range(count):
        p.primary.deliver(address, _msg(i))
    with p.src.tx() as s:
        mid = s.scalar(select(Mailbox.id).where(Mailbox.address == address))
    p.capture.cycle(mid, p.primary.open(address))
    while p.shipper.ship_once():
        pass
    with p.dst.tx() as s:
        return s.scalar(select(Replica.id).where(Replica.address == address))


def apply(p: Pipeline, rid: int, address: str) -> None:
    """A replay pass, then what the recovery gateway does after one that applied: the signal."""
    p.replay.replay(rid, p.standby.open(address))
    p.receiver.signal.applied(rid)


def positions(p: Pipeline, address: str) -> tuple[int, int, int]:
    with p.src.tx() as s:
        m = s.scalar(select(Mailbox).where(Mailbox.address == address))
        return m.last_seq, m.acked_seq, m.applied_seq


# ---------------------------------------------------------------- the token


def test_token_round_trip_and_what_it_asks_for():
    sig = ProgressSignal()
    first = sig.token
    assert sig.since(first) == Since(0) and not sig.changed(sig.since(first))
    sig.applied(7)
    sig.applied(9)
    second = sig.token
    assert sig.changed(sig.since(first)) and sig.replicas(sig.since(first)) == {7, 9}
    sig.applied(7)
    assert sig.replicas(sig.since(second)) == {7}
    assert sig.replicas(sig.since(sig.token)) == set()


@pytest.mark.parametrize("seen", [None, "", "junk", "0000000.1", "zzzzzzzz.1", "deadbeef.-1", "x" * 40])
def test_a_token_this_process_did_not_give_gets_everything_at_once(seen):
    sig = ProgressSignal()
    since = sig.since(seen)
    assert since.full and sig.changed(since) and sig.replicas(since) is None


def test_a_token_of_another_epoch_or_from_the_future_gets_everything():
    before, after = ProgressSignal(), ProgressSignal()
    before.applied(1)
    assert after.since(before.token).full  # the recovery gateway restarted
    assert after.since(f"{after.epoch}.5").full  # a generation it never reached


def test_the_answer_carries_its_token_and_a_bad_one_is_refused():
    ack = Ack((), token="abcdef01.3")
    assert Ack.from_json(ack.to_json()) == ack
    assert "token" not in Ack(()).to_json() and Ack.from_json({"v": 1, "results": []}).token is None
    with pytest.raises(WireError):
        Ack.from_json({"v": 1, "results": [], "token": "t" * 41})
    with pytest.raises(WireError):
        Ack.from_json({"v": 1, "results": [], "token": 5})


def test_a_wait_is_woken_by_the_commit_of_a_pass_in_another_thread():
    sig = ProgressSignal()
    since = sig.since(sig.token)

    async def waiting():
        threading.Timer(0.05, sig.applied, (3,)).start()  # replay passes run in worker threads
        t0 = time.monotonic()
        changed = await sig.wait(since, 5.0)
        return changed, time.monotonic() - t0

    changed, waited = asyncio.run(waiting())
    assert changed and sig.replicas(since) == {3}
    assert waited < 2.5, f"woken by the commit, not at the end of the wait ({waited:.2f} s)"
    assert sig._waiters == []


def test_a_wait_ends_at_once_when_something_was_applied_and_after_its_time_when_not():
    sig = ProgressSignal()
    since = sig.since(sig.token)
    t0 = time.monotonic()
    assert asyncio.run(sig.wait(since, 0.3)) is False
    assert time.monotonic() - t0 >= 0.3 and sig._waiters == []
    sig.applied(1)
    assert asyncio.run(sig.wait(since, 30.0)) is True  # applied before the wait: no wait at all
    assert asyncio.run(sig.wait(Since(None), 30.0)) is True  # a full answer is always due


def test_waits_in_several_event_loops_are_all_woken_and_a_cancelled_one_leaves_nothing():
    sig = ProgressSignal()
    since = sig.since(sig.token)
    results: list[bool] = []

    def in_own_loop():
        results.append(asyncio.run(sig.wait(since, 10.0)))

    threads = [threading.Thread(target=in_own_loop) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(sig._waiters) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sig._waiters) == 3
    sig.applied(9)
    deadline = time.monotonic() + 4  # well before their wait of 10 s ends
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert results == [True, True, True] and sig._waiters == []

    async def cancelled():
        task = asyncio.ensure_future(sig.wait(sig.since(sig.token), 10.0))
        await asyncio.sleep(0.05)
        assert len(sig._waiters) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())  # a client that went away
    assert sig._waiters == []
    sig.applied(9)  # and a commit afterwards wakes nobody, without error


# ---------------------------------------------------------------- the recovery gateway's route


def test_a_waiting_query_is_answered_when_a_pass_commits_with_only_that_replica(tmp_path):
    p = Pipeline(tmp_path)
    rid_a = seeded(p, "alice", 3)
    seeded(p, "bob", 2)
    full = p.shipper.peer.progress()
    assert {r.address for r in full.results} == {"alice", "bob"} and full.token

    timer = threading.Timer(0.3, apply, (p, rid_a, "alice"))
    timer.start()
    t0 = time.monotonic()
    delta = p.shipper.peer.progress(seen=full.token, wait=8)
    waited = time.monotonic() - t0
    timer.join()
    assert [(r.address, r.applied) for r in delta.results] == [("alice", positions(p, "alice")[0])]
    assert 0.25 <= waited < 5, f"answered when the pass committed, not at the end of the wait ({waited:.2f} s)"
    assert delta.token != full.token


def test_a_waiting_query_with_nothing_applied_ends_after_its_wait_empty(tmp_path):
    p = Pipeline(tmp_path)
    seeded(p, "alice", 2)
    token = p.shipper.peer.progress().token
    t0 = time.monotonic()
    ack = p.shipper.peer.progress(seen=token, wait=0.4)
    assert time.monotonic() - t0 >= 0.4 and ack.results == () and ack.token == token


def test_the_route_checks_its_wait_and_token(tmp_path):
    p = Pipeline(tmp_path)
    url = "/api/v1/ingest/progress"
    for params in ({"wait": "11"}, {"wait": "-1"}, {"wait": "x"}, {"seen": "s" * 41}):
        r = p.client.get(url, params={"source": "hq", **params}, headers=AUTH)
        assert r.status_code == 422, (params, r.text)
    r = p.client.get(url, params={"source": "other", "seen": "x", "wait": "1"}, headers=AUTH)
    assert r.status_code == 403


# ---------------------------------------------------------------- the source gateway's watcher


def test_the_watcher_moves_positions_forward_only(tmp_path):
    p = Pipeline(tmp_path)
    seeded(p, "alice", 5)
    last, acked, applied = positions(p, "alice")
    assert acked == last > 2 and applied == 0
    # an answer read at the peer before the last batch was stored: acked 2, applied 2
    old = Ack((SegmentResult(server="primary", address="alice", status="ok", acked=2, applied=2),))
    p.shipper._record(old, forward_only=True)
    assert positions(p, "alice") == (last, last, 2), "nothing sent again, what was applied learned"
    p.shipper._record(old)  # the shipper's own query: the peer holds less than it acknowledged
    assert positions(p, "alice")[1] == 2


def test_the_watcher_learns_a_replay_pass_without_the_polling(tmp_path, monkeypatch):
    monkeypatch.setattr(shipper_module, "PROGRESS_IDLE_EVERY", 3600.0)  # only the watcher tells
    monkeypatch.setattr(shipper_module, "PROGRESS_WATCHED_EVERY", 3600.0)
    p = Pipeline(tmp_path)
    rid = seeded(p, "alice", 4)
    p.shipper.start()
    try:
        deadline = time.monotonic() + 10
        while not p.shipper.watching and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.shipper.watching, "the peer answers waiting queries: the watcher follows it"
        apply(p, rid, "alice")
        t0 = time.monotonic()
        last = positions(p, "alice")[0]
        while positions(p, "alice")[2] < last and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        assert positions(p, "alice") == (last, last, last)
        assert time.monotonic() - t0 < 3, "learned as the pass committed, not at the end of a wait"
    finally:
        p.shipper.stop()


def test_without_tokens_from_the_peer_the_watcher_leaves_it_to_the_polling(tmp_path, monkeypatch):
    p = Pipeline(tmp_path)
    seeded(p, "alice", 2)
    calls = []

    def old_peer(**kw):  # a recovery gateway of an earlier version: no token, answers at once
        calls.append(kw)
        return Ack(())

    monkeypatch.setattr(p.shipper.peer, "progress", old_peer)
    p.shipper._watch()  # returns: nothing to follow
    assert not p.shipper.watching and len(calls) == 1


def test_a_small_progress_answer_among_many_mailboxes_is_applied(tmp_path):
    p = Pipeline(tmp_path)
    seeded(p, "alice", 2)
    with p.src.tx() as s:
        s.execute(update(Mailbox).where(Mailbox.address == "alice").values(applied_seq=0))
        for i in range(600):
            s.add(Mailbox(server="primary", address=f"user{i}", protected=True, phase="replicating"))
    ack = Ack((SegmentResult(server="primary", address="alice", status="ok", acked=2, applied=2),))
    p.shipper._record(ack, forward_only=True)
    last = positions(p, "alice")[0]
    assert positions(p, "alice")[2] == 2 <= last


def test_replay_tells_of_each_group_it_committed_not_only_the_end_of_the_pass(tmp_path):
    """A long pass (a seed) applies group after group: each is told as it commits, so a waiting
    progress query answers while the pass goes on."""
    p = Pipeline(tmp_path)
    rid = seeded(p, "alice", 10)  # appended 4 at a time (the pipeline's append_batch)
    seen: list[int] = []

    def applied(replica_id: int) -> None:
        with p.dst.read() as s:  # what a progress query would read now
            seen.append(s.scalar(select(Replica.applied_seq).where(Replica.id == replica_id)))

    p.replay.on_applied = applied
    p.replay.replay(rid, p.standby.open("alice"))
    last = positions(p, "alice")[0]
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == last
    assert seen[0] < last, "the first group was visible before the pass ended"
