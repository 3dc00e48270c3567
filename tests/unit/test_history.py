"""History at the recovery gateway: snapshots, the mailbox at a time, pruning, what GC keeps.

Runs the in-memory capture -> ship -> receive -> replay pipeline (``test_pipeline_memory``); the
restore end to end on real Dovecot servers is in tests/e2e/test_history_restore.py.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from datetime import timedelta

import pytest
from mailrepl.recovery.history import HistoryKeeper
from mailrepl.recovery.history_settings import HistorySettings
from mailrepl.recovery.restore_plan import Catalogue, HistoryGap
from mailrepl.shared.model import parse_internaldate, utcnow
from mailrepl.shared.store.models import HistorySnapshot, InboxBody, InboxRow, Replica
from sqlalchemy import func, select

from tests.unit.test_pipeline_memory import Pipeline, _msg


def primary_state(p: Pipeline) -> dict[str, Counter]:
    return {name: Counter((hashlib.sha256(m.body).hexdigest(), frozenset(m.flags), int(m.date.timestamp()))
                          for m in f.msgs.values())
            for name, f in p.primary.box("alice").items() if f.msgs}


def history_state(cat: Catalogue) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for m in cat.messages.values():
        out.setdefault(m.folder, Counter())[(m.sha256, frozenset(m.flags),
                                             int(parse_internaldate(m.internaldate).timestamp()))] += 1
    return out


def replica_id(p: Pipeline) -> int:
    with p.dst.read() as s:
        return s.scalar(select(Replica.id).where(Replica.address == "alice"))


@pytest.fixture
def lived(tmp_path):
    """A mailbox with a life: seeded, flagged, moved, renamed, 80 % deleted; the primary's state and
    the time after each step."""
    p = Pipeline(tmp_path)
    keeper = HistoryKeeper(p.dst, HistorySettings(retention_days=14, snapshot_every_changes=6))
    seen = []

    def step():
        p.sync()
        p.assert_equal()
        keeper.maintain()
        seen.append((utcnow(), primary_state(p), set(p.primary.box("alice"))))

    for i in range(10):
        p.primary.deliver("alice", _msg(i), flags={"\\Seen"} if i % 2 else set())
    p.primary.deliver("alice", _msg(10), folder="Archive")
    step()                                                          # 0: seeded
    p.primary.set_flags("alice", "INBOX", 1, {"\\Flagged"})
    p.primary.move("alice", "INBOX", 2, "Archive")
    step()                                                          # 1: after a move
    box = p.primary.box("alice")
    box["Projects"] = box.pop("Archive")
    box["Projects"].name = "Projects"
    p.primary.deliver("alice", _msg(20), folder="Projects")
    step()                                                          # 2: between two renames
    box["Old"] = box.pop("Projects")
    box["Old"].name = "Old"
    step()                                                          # 3
    p.primary.expunge("alice", "INBOX", [3, 4, 5, 6, 7, 8, 9, 10])
    step()                                                          # 4: after a mass delete
    return p, keeper, seen


def test_the_mailbox_at_each_time_is_what_the_primary_held(lived):
    p, keeper, seen = lived
    rid = replica_id(p)
    with p.dst.read() as s:
        snaps = s.scalar(select(func.count()).select_from(HistorySnapshot).where(HistorySnapshot.replica_id == rid))
    assert snaps >= 3, "base snapshots are taken as changes are applied"
    for when, state, folders in seen:
        cat = keeper.at(rid, when)
        assert history_state(cat) == state
        assert set(state) <= set(cat.folders)
    at2 = keeper.at(rid, seen[2][0])
    assert "Projects" in at2.folders and "Archive" not in at2.folders and "Old" not in at2.folders
    assert [(old, new) for _, old, new in keeper.at(rid, seen[3][0]).renames] == [("Archive", "Projects"),
                                                                                  ("Projects", "Old")]
    assert keeper.at(rid, seen[0][0] - timedelta(days=30)).messages == {}, "before the first change: empty"


def test_gc_keeps_what_history_refers_to_and_pruning_lets_it_go(lived):
    p, keeper, seen = lived
    rid = replica_id(p)
    deleted = {sha for sha, _, _ in seen[3][1]["INBOX"]} - {sha for sha, _, _ in seen[4][1]["INBOX"]}
    assert len(deleted) == 8
    report = p.bodies.collect_garbage(grace_seconds=0, history_of=keeper.history_replicas())
    assert report.bodies_deleted == 0
    held = p.bodies.load(sorted(deleted))
    assert set(held) == deleted, "deleted mail stays restorable within retention"
    space = keeper.space(rid, fresh=True)
    assert space.body_bytes == sum(map(len, held.values())) and space.changes > 0
    assert space.from_start and space.total_bytes > space.body_bytes

    # 15 days on: only what a restore to the last 14 days needs is kept
    later = utcnow() + timedelta(days=15)
    keeper.maintain(now=later)
    with p.dst.read() as s:
        kept = list(s.scalars(select(HistorySnapshot.seq).where(HistorySnapshot.replica_id == rid)))
        rows = s.scalar(select(func.count()).select_from(InboxRow).where(InboxRow.replica_id == rid))
        applied = s.get(Replica, rid).applied_seq
    assert kept == [applied] and rows == 0
    assert history_state(keeper.at(rid, later)) == seen[4][1]
    with pytest.raises(HistoryGap):
        keeper.at(rid, seen[1][0])
    p.bodies.collect_garbage(grace_seconds=0, history_of=keeper.history_replicas())
    with p.dst.read() as s:
        left = set(s.scalars(select(InboxBody.sha256)))
    assert not deleted & left, "bodies only pruned history referred to are collected"


def test_no_history_without_retention(tmp_path):
    p = Pipeline(tmp_path)
    keeper = HistoryKeeper(p.dst, HistorySettings(retention_days=0, mailboxes={"bob": 3.0}))
    p.primary.deliver("alice", _msg(1))
    p.sync()
    keeper.maintain()
    rid = replica_id(p)
    assert keeper.history_replicas() == [] and keeper.space(rid) is None
    with pytest.raises(HistoryGap, match="retention is 0"):
        keeper.at(rid, utcnow())
