"""Lagged copies: the replay gate plays a change only once it is older than the mailbox's delay,
and at a cutover plays everything, up to a time, or nothing more (in-memory pipeline; capture
times are set in the state store to place changes in time). On Dovecot: tests/e2e/test_lagged_copy.py.
"""
from __future__ import annotations

from datetime import timedelta

from mailrepl.recovery.lag_settings import LagSettings
from mailrepl.recovery.replay_gate import ReplayGate
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.model import utcnow
from mailrepl.shared.store.models import InboxRow, Replica
from sqlalchemy import select, update

from tests.unit.test_pipeline_memory import Pipeline, _msg


def lagged(tmp_path, delay=3600.0):
    p = Pipeline(tmp_path)
    gate = ReplayGate(p.dst, LagSettings(replay_delay=delay))
    p.replay = ReplayEngine(p.dst, p.bodies, append_batch=4, gate=gate)
    return p, gate


def receive(p: Pipeline) -> int:
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    while p.shipper.ship_once():
        pass
    with p.dst.read() as s:
        return s.scalar(select(Replica.id))


def age(p: Pipeline, rid: int, seqs, when) -> None:
    with p.dst.tx() as s:
        s.execute(update(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq.in_(list(seqs)))
                  .values(captured_at=when))


def standby_bodies(p: Pipeline) -> set[bytes]:
    return {m.body for f in p.standby.box("alice").values() for m in f.msgs.values()}


def test_changes_wait_for_the_delay_and_are_played_in_order(tmp_path):
    p, gate = lagged(tmp_path)
    for i in range(6):
        p.primary.deliver("alice", _msg(i))
    rid = receive(p)
    with p.dst.read() as s:
        seqs = list(s.scalars(select(InboxRow.seq).where(InboxRow.replica_id == rid).order_by(InboxRow.seq)))
    assert p.replay.replay(rid, p.standby.open("alice")).applied == 0
    assert standby_bodies(p) == set()
    w = gate.waiting(rid)
    assert w["waiting"] == len(seqs) and w["not_yet_due"] == len(seqs) and w["replay_delay_seconds"] == 3600
    assert not gate.due(rid)
    # the first half is older than the delay now; a later one old too, but after a young one: waits
    now = utcnow()
    half = seqs[: len(seqs) // 2]
    age(p, rid, half, now - timedelta(hours=2))
    age(p, rid, seqs[-1:], now - timedelta(hours=2))
    assert gate.due(rid)
    p.replay.replay(rid, p.standby.open("alice"))
    with p.dst.read() as s:
        assert s.get(Replica, rid).applied_seq == half[-1]
    assert gate.waiting(rid)["waiting"] == len(seqs) - len(half)


def test_cutover_plays_up_to_a_time_and_sets_the_rest_aside(tmp_path):
    p, gate = lagged(tmp_path)
    for i in range(4):
        p.primary.deliver("alice", _msg(i))
    rid = receive(p)
    now = utcnow()
    with p.dst.read() as s:
        seqs = list(s.scalars(select(InboxRow.seq).where(InboxRow.replica_id == rid).order_by(InboxRow.seq)))
    age(p, rid, seqs[:-1], now - timedelta(minutes=30))  # the last add after T
    with p.dst.tx() as s:
        s.get(Replica, rid).site_state = "cutting-over"
    gate.at_cutover([rid], "none")
    assert p.replay.replay(rid, p.standby.open("alice")).applied == 0
    gate.at_cutover([rid], "until", now - timedelta(minutes=10))
    p.replay.replay(rid, p.standby.open("alice"))
    assert standby_bodies(p) == {_msg(i) for i in range(3)}
    with p.dst.tx() as s:
        rep = s.get(Replica, rid)
        rep.cutover_seq = rep.applied_seq
    aside = gate.set_aside(rid)
    assert [a["seq"] for a in aside] == seqs[-1:] and aside[0]["kind"] == "msg.add"
    gate.at_cutover([rid], "all")
    p.replay.replay(rid, p.standby.open("alice"))
    assert standby_bodies(p) == {_msg(i) for i in range(4)}


def test_status_detail_shows_the_delay_what_waits_and_what_is_held():
    from mailrepl.shared.cli.status_view import _time_lines

    lines = _time_lines({"replay_delay_seconds": 3600, "delayed_changes": 4, "held_deletions": 24,
                         "history_bytes": 123456})
    assert lines == ["lagged copy: replay delay 1h00m, 4 received changes not yet due",
                     "mass-delete guard: 24 changes held (mailrepl guard --release / --discard)",
                     "history: 123.5 kB kept"]
    assert _time_lines({"replay_delay_seconds": None, "held_deletions": None}) == []
