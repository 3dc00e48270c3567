"""The mass-delete guard as the replay engine's gate, on the in-memory pipeline.

A mass delete is held on the standby while other changes flow; changes that depend on a held one
wait with it (order per message); release plays them in order, discard drops the deletions only;
the hold survives a restart; deletions spread over time do not trip it. On real Dovecot:
tests/e2e/test_delete_guard.py.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from mailrepl.recovery.delete_guard import DeleteGuard
from mailrepl.recovery.guard_settings import GuardSettings
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.model import utcnow
from mailrepl.shared.store.models import AuditEntry, InboxRow, Replica
from sqlalchemy import select, update

from tests.unit.test_history import primary_state
from tests.unit.test_pipeline_memory import Pipeline, _msg, snapshot

SETTINGS = GuardSettings(min_messages=10, share=0.5, max_messages=1000, window_seconds=300)


def guarded(tmp_path, settings=SETTINGS) -> tuple[Pipeline, DeleteGuard]:
    p = Pipeline(tmp_path)
    guard = DeleteGuard(p.dst, settings)
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4, gate=guard.gate)
    return p, guard


def rid_of(p: Pipeline) -> int:
    with p.dst.read() as s:
        return s.scalar(select(Replica.id))


def standby_state(p: Pipeline) -> dict:
    return {f: c for f, c in snapshot(p.standby, "alice").items() if c}


@pytest.fixture
def held(tmp_path):
    """30 messages; 24 deleted at once (held), then a message moved to the trash and flagged."""
    p, guard = guarded(tmp_path)
    for i in range(30):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    p.assert_equal()
    before = standby_state(p)
    p.primary.expunge("alice", "INBOX", list(range(1, 25)))
    p.sync()
    rid = rid_of(p)
    assert guard.status(rid)["tripped"] and guard.status(rid)["held"] == 24
    assert standby_state(p) == before, "the standby keeps every message"
    # everything else flows; what touches a held message or folder waits with it
    p.primary.deliver("alice", _msg(40))
    p.primary.set_flags("alice", "INBOX", 25, {"\\Flagged"})
    p.primary.move("alice", "INBOX", 26, "Trash")
    p.sync()
    trash_uid = max(p.primary.box("alice")["Trash"].msgs)
    p.primary.set_flags("alice", "Trash", trash_uid, {"\\Seen"})  # later: waits behind the held move
    p.sync()
    inbox = p.standby.box("alice")["INBOX"].msgs.values()
    assert any(m.body == _msg(40) for m in inbox) and any(m.flags == {"\\Flagged"} for m in inbox)
    assert not p.standby.box("alice").get("Trash") or not p.standby.box("alice")["Trash"].msgs
    assert guard.status(rid)["held"] == 26
    return p, guard, rid


def test_release_plays_the_held_changes_in_order(held):
    p, guard, rid = held
    with p.dst.read() as s:
        assert s.scalar(select(AuditEntry.target).where(AuditEntry.principal == "mass-delete-guard"))
    assert [a.kind for a in guard.alarms()] == ["mass-delete-hold"]
    result = guard.resolve(rid, p.standby.open("alice"), discard=False, engine=p.replay)
    assert result == {"played": 26, "discarded": 0, "rejected": 0}
    p.assert_equal()
    assert guard.status(rid) is None and guard.alarms() == []


def test_discard_keeps_the_messages_and_plays_the_rest(held):
    p, guard, rid = held
    result = guard.resolve(rid, p.standby.open("alice"), discard=True, engine=p.replay)
    assert result["discarded"] == 25 and result["played"] == 1  # the flag change on the trashed message
    inbox = p.standby.box("alice")["INBOX"].msgs.values()
    assert len(inbox) == 31 and any(m.body == _msg(26 - 1) and m.flags == {"\\Seen"} for m in inbox)
    with p.dst.read() as s:
        assert s.scalar(select(InboxRow.state).where(InboxRow.replica_id == rid, InboxRow.state == "held")) is None
    # replication goes on normally afterwards
    p.primary.expunge("alice", "INBOX", [27])
    p.sync()
    assert guard.status(rid) is None
    assert not any(m.body == _msg(26) for m in p.standby.box("alice")["INBOX"].msgs.values())


def test_the_hold_survives_a_restart(held):
    p, _guard, rid = held
    again = DeleteGuard(p.dst, SETTINGS)  # a new process: state from the store
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4, gate=again.gate)
    p.primary.expunge("alice", "INBOX", [28])
    p.sync()
    assert again.status(rid)["tripped"] and again.status(rid)["held"] == 27
    again.resolve(rid, p.standby.open("alice"), discard=False, engine=p.replay)
    p.assert_equal()


def test_ordinary_deletes_spread_over_time_do_not_trip_it(tmp_path):
    p, guard = guarded(tmp_path, GuardSettings(min_messages=40, share=0.2, max_messages=1000, window_seconds=300))
    for i in range(150):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    rid = rid_of(p)
    start = utcnow()
    for batch in range(10):  # 100 deletes, 10 every 2 minutes: at most 30 in any 5 minutes
        p.primary.expunge("alice", "INBOX", list(range(1 + 10 * batch, 11 + 10 * batch)))
        p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
        while p.shipper.ship_once():
            pass
        with p.dst.tx() as s:
            applied = s.get(Replica, rid).applied_seq
            s.execute(update(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq > applied)
                      .values(captured_at=start + timedelta(minutes=2 * batch)))
        p.replay.replay(rid, p.standby.open("alice"))
    p.shipper.poll_progress()
    assert guard.status(rid) is None
    p.assert_equal()
    assert sum(sum(c.values()) for c in primary_state(p).values()) == 50
