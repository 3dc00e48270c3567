"""A gap answer that asks again for changes the recovery gateway has applied since is not a loss.

Batches travel side by side: one can reach the peer before the batch sent ahead of it, and is
answered as a gap. By the time that answer is applied here, the batch ahead may have been stored
and applied at DR, and the progress watcher may have said so: the gap then asks for changes
already applied (and removed here). Only a progress answer taken with nothing in flight tells an
overtaken answer (the batch is sent again) from a peer that really lost changes (set aside).
"""
from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update

from mailrepl.shared.protocol.wire import encode_batch
from mailrepl.shared.store.models import InboxRow, Replica
from tests.unit.test_pipeline_memory import Pipeline, _msg


def _replay(p: Pipeline) -> None:
    with p.dst.tx() as s:
        rid = s.scalar(select(Replica.id).where(Replica.address == "alice"))
    p.replay.replay(rid, p.standby.open("alice"))


def test_a_gap_overtaken_by_the_batch_ahead_of_it_is_sent_again_not_an_error(tmp_path):
    p = Pipeline(tmp_path)  # 7 changes per batch
    for i in range(12):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    ahead = p.shipper.build_batch()
    behind = p.shipper.build_batch({("primary", "alice"): ahead.batch.segments[0].range.last})
    first = behind.batch.segments[0].range.first
    assert first == ahead.batch.segments[0].range.last + 1

    # the batch behind arrives first: a gap from the start of the one ahead
    gap = p.shipper._send(encode_batch(behind.batch), behind)
    assert gap.results[0].status == "gap" and gap.results[0].resend_from == 1
    # the one ahead is stored, applied at DR, and the watcher hears of it before the gap is read
    ok = p.shipper._send(encode_batch(ahead.batch), ahead)
    p.shipper._record(ok, ahead)
    _replay(p)
    p.shipper._record(p.shipper.peer.progress(), forward_only=True)
    assert p.mailbox().applied_seq == first - 1
    p.shipper._record(gap, behind)  # 1 <= applied: it asks for what DR applied

    mbx = p.mailbox()
    assert mbx.ship_error is None and mbx.acked_seq == first - 1
    assert p.shipper._doubtful == {("primary", "alice")}
    p.shipper.settle_doubts()  # the peer holds all it applied: nothing was lost
    assert p.shipper._doubtful == set()
    assert p.mailbox().ship_error is None

    p.sync()  # the batch behind is sent again, from where the peer stands
    mbx = p.mailbox()
    assert mbx.ship_error is None and mbx.applied_seq == mbx.last_seq
    p.assert_equal()


def test_a_peer_that_lost_applied_changes_is_set_aside_with_that_error(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(5):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    applied = p.mailbox().applied_seq
    assert applied >= 5 and p.mailbox().ship_error is None
    # the recovery gateway's state is restored from an older backup: it holds up to 2
    with p.dst.tx() as s:
        s.execute(delete(InboxRow).where(InboxRow.seq > 2))
        s.execute(update(Replica).values(received_seq=2, applied_seq=2))

    p.primary.deliver("alice", _msg(9))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert p.shipper.ship_once()  # answered as a gap from 3, settled by a progress query at once
    mbx = p.mailbox()
    assert mbx.ship_error is not None and "lost changes from 3 on" in mbx.ship_error, mbx.ship_error
    assert p.shipper.build_batch() is None  # set aside: nothing more is sent for it
    assert p.shipper._doubtful == set()


def test_a_doubt_is_kept_while_the_peer_does_not_answer(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(5):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    with p.dst.tx() as s:
        s.execute(delete(InboxRow).where(InboxRow.seq > 2))
        s.execute(update(Replica).values(received_seq=2, applied_seq=2))
    p.primary.deliver("alice", _msg(9))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))

    real = p.shipper.peer.progress
    calls = []

    def unreachable(**kw):
        calls.append(kw)
        raise ConnectionError("recovery gateway unreachable")

    p.shipper.peer.progress = unreachable
    with pytest.raises(ConnectionError):
        p.shipper.ship_once()
    assert calls and p.shipper._doubtful == {("primary", "alice")}
    assert p.mailbox().ship_error is None  # not decided without an answer
    p.shipper.peer.progress = real
    assert p.shipper.ship_pipelined() == 0  # settled first: set aside, nothing sent
    assert "lost changes from 3 on" in p.mailbox().ship_error
