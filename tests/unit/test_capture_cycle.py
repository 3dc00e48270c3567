"""A capture cycle's transactions: new messages that fit in one chunk are captured by the plan's
own transaction (one writing transaction per delivery), nothing is lost when the fetch fails or
a message goes between the delta and the fetch, and more than a chunk still drains in chunks."""
from __future__ import annotations

import json

import pytest
from mailrepl.shared.errors import ServerUnavailable
from mailrepl.shared.model import Cursor
from mailrepl.shared.store.models import FolderState, Mailbox, OutboxRow
from sqlalchemy import event, select

from tests.unit.test_pipeline_memory import Pipeline, _msg


class Transactions:
    """Counts the transactions begun on a store: writing and read-only."""

    def __init__(self, store) -> None:
        self.writing = self.reading = 0
        event.listen(store.engine, "begin", self._begin)

    def _begin(self, conn) -> None:
        if conn.get_execution_options().get("mailrepl_read_only", False):
            self.reading += 1
        else:
            self.writing += 1

    def take(self) -> tuple[int, int]:
        out = (self.writing, self.reading)
        self.writing = self.reading = 0
        return out


def kinds_after(p: Pipeline, seq: int) -> list[tuple[str, str]]:
    with p.src.read() as s:
        rows = s.scalars(select(OutboxRow.change).where(OutboxRow.seq > seq).order_by(OutboxRow.seq))
        return [(c["kind"], c["folder"]) for c in map(json.loads, rows)]


def folders(p: Pipeline) -> dict[str, FolderState]:
    with p.src.read() as s:
        return {f.name: f for f in s.scalars(select(FolderState))}


def seeded(tmp_path, chunk: int = 5) -> Pipeline:
    p = Pipeline(tmp_path, chunk=chunk)
    for i in range(3):
        p.primary.deliver("alice", _msg(i))
    p.sync()
    assert p.mailbox().phase == "replicating"
    return p


def test_new_messages_that_fit_in_a_chunk_are_captured_by_the_plans_one_transaction(tmp_path):
    p = seeded(tmp_path)
    mid = p.mailbox().id
    before = p.mailbox().last_seq
    p.primary.deliver("alice", _msg(10))
    p.primary.deliver("alice", _msg(11))
    p.primary.set_flags("alice", "INBOX", 1, {"\\Flagged"})
    p.primary.deliver("alice", _msg(12), folder="Lists")
    tx = Transactions(p.src)
    report = p.capture.cycle(mid, p.primary.open("alice"))
    assert report.messages == 3 and report.pending == 0 and report.wrote
    # one writing transaction (folder, flags, the three messages, the cursors) after one read
    assert tx.take() == (1, 1)
    assert kinds_after(p, before) == [("folder.create", "Lists"), ("msg.flags", "INBOX"),
                                      ("msg.add", "INBOX"), ("msg.add", "INBOX"), ("msg.add", "Lists")]
    box = p.primary.box("alice")
    for name, f in folders(p).items():
        assert f.pending_uids is None and f.pending_cursor is None
        assert Cursor.parse(f.cursor).uidnext == box[name].uidnext, name
    tx.take()
    assert p.capture.cycle(mid, p.primary.open("alice")).changes == 0
    assert tx.take() == (0, 1)  # an idle cycle: one read, nothing written
    p.sync()
    p.assert_equal()


def test_a_failed_fetch_commits_nothing_and_the_next_cycle_captures_everything_once(tmp_path):
    p = seeded(tmp_path)
    mid = p.mailbox().id
    before = p.mailbox().last_seq
    p.primary.deliver("alice", _msg(20))
    p.primary.expunge("alice", "INBOX", [2])
    session = p.primary.open("alice")

    def broken(folder, uids):
        raise ServerUnavailable("connection dropped")
        yield  # a generator, as the adapters' fetch is

    session.fetch = broken
    with pytest.raises(ServerUnavailable):
        p.capture.cycle(mid, session)
    assert p.mailbox().last_seq == before  # the expunge is not committed without the add either
    assert p.capture.cycle(mid, p.primary.open("alice")).messages == 1
    assert sorted(kinds_after(p, before)) == [("msg.add", "INBOX"), ("msg.expunge", "INBOX")]
    p.sync()
    p.assert_equal()


def test_a_message_expunged_between_the_delta_and_the_fetch_is_skipped_and_the_cursor_moves_on(tmp_path):
    p = seeded(tmp_path)
    mid = p.mailbox().id
    before = p.mailbox().last_seq
    gone = p.primary.deliver("alice", _msg(30))
    kept = p.primary.deliver("alice", _msg(31))
    session = p.primary.open("alice")
    real = session.fetch

    def fetch(folder, uids):
        assert list(uids) == [gone, kept]
        p.primary.expunge("alice", folder, [gone])  # another client, after the delta was read
        return real(folder, uids)

    session.fetch = fetch
    report = p.capture.cycle(mid, session)
    assert report.messages == 1 and report.pending == 0
    assert kinds_after(p, before) == [("msg.add", "INBOX")]
    inbox = folders(p)["INBOX"]
    assert inbox.pending_uids is None and Cursor.parse(inbox.cursor).uidnext == kept + 1
    assert p.capture.cycle(mid, p.primary.open("alice")).changes == 0  # its VANISHED: not catalogued
    p.sync()
    p.assert_equal()


def test_new_messages_all_expunged_before_the_fetch_leave_nothing_pending(tmp_path):
    p = seeded(tmp_path)
    mid = p.mailbox().id
    before = p.mailbox().last_seq
    gone = [p.primary.deliver("alice", _msg(i)) for i in (32, 33)]
    p.primary.set_flags("alice", "INBOX", 1, {"\\Seen"})
    session = p.primary.open("alice")
    real = session.fetch

    def fetch(folder, uids):
        p.primary.expunge("alice", folder, gone)
        return real(folder, uids)

    session.fetch = fetch
    report = p.capture.cycle(mid, session)
    assert report.messages == 0 and report.pending == 0
    assert kinds_after(p, before) == [("msg.flags", "INBOX")]
    inbox = folders(p)["INBOX"]
    assert inbox.pending_uids is None and Cursor.parse(inbox.cursor).uidnext == gone[-1] + 1
    p.sync()
    p.assert_equal()


def test_more_new_messages_than_a_chunk_are_left_pending_and_drained_by_chunks(tmp_path):
    p = seeded(tmp_path, chunk=3)
    mid = p.mailbox().id
    for i in range(40, 47):
        p.primary.deliver("alice", _msg(i))
    commits: list[int] = []
    real = p.capture._commit_chunk

    def commit(mailbox_id, folder_id, batch, remaining, replace, report):
        commits.append(len(batch))
        real(mailbox_id, folder_id, batch, remaining, replace, report)

    p.capture._commit_chunk = commit
    tx = Transactions(p.src)
    assert p.capture.cycle(mid, p.primary.open("alice")).messages == 7
    assert commits == [3, 3, 1]
    assert tx.take()[0] == 1 + 3  # the plan (pending work set), then one per chunk
    with p.src.read() as s:
        assert s.get(Mailbox, mid).last_seq == s.scalar(select(OutboxRow.seq).order_by(OutboxRow.seq.desc()))
    p.sync()
    p.assert_equal()


def test_each_committed_chunk_is_announced_while_the_rest_is_still_pending(tmp_path):
    """The shipper is told as each chunk of a long drain commits, so a seed is sent while it is
    still being read; what it then finds in the outbox is exactly what committed so far."""
    p = seeded(tmp_path, chunk=3)
    mid = p.mailbox().id
    for i in range(40, 47):
        p.primary.deliver("alice", _msg(i))
    seen: list[tuple[int, int]] = []  # (outbox rows, messages still pending) at each announcement

    def committed() -> None:
        with p.src.read() as s:
            rows = len(s.scalars(select(OutboxRow.seq)).all())
            pending = [f.pending_uids for f in s.scalars(select(FolderState)) if f.pending_uids]
        seen.append((rows, len(pending)))

    p.capture.on_committed = committed
    with p.src.read() as s:
        before = len(s.scalars(select(OutboxRow.seq)).all())
    assert p.capture.cycle(mid, p.primary.open("alice")).messages == 7
    assert [rows - before for rows, _ in seen] == [3, 6, 7]  # one msg.add per message, chunk by chunk
    assert [pending for _, pending in seen] == [1, 1, 0]  # the first two while the folder still had work
    assert p.capture.cycle(mid, p.primary.open("alice")).changes == 0
    assert len(seen) == 3  # a cycle that commits no change announces nothing
    p.sync()
    p.assert_equal()
