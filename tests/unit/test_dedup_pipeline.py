"""Bodies and parts cross once; damaged parts at DR are detected and fetched again.

Runs the capture -> ship -> replay pipeline of ``test_pipeline_memory`` against in-memory
servers; the same behaviour on real Dovecot servers is in tests/e2e/test_dedup.py.
"""
from __future__ import annotations

import base64
import os

import pytest
from sqlalchemy import select

from mailrepl.shared.content.bodies import BodyCorrupt
from mailrepl.shared.store.models import InboxBody, InboxPart, Replica
from tests.unit.test_pipeline_memory import Pipeline


def with_attachment(subject: str, payload: bytes) -> bytes:
    b64 = base64.b64encode(payload).decode()
    body = "\r\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    return (f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@x>\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nsee attached\r\n'
            "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{body}\r\n--b--\r\n").encode()


def part_files(p: Pipeline) -> list:
    return [f for f in (p.blobs.root).glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*") if f.is_file()]


def test_an_attachment_in_many_messages_is_sent_once(tmp_path):
    p = Pipeline(tmp_path)
    payload = os.urandom(200_000)
    for i in range(10):
        p.primary.deliver("alice", with_attachment(f"copy {i}", payload), folder="INBOX" if i % 2 else "Archive")
    p.sync()
    p.assert_equal()
    stats = p.shipper.stats
    assert stats.raw_bytes > 10 * len(payload)
    assert stats.payload_bytes < 1.5 * len(payload), "the attachment must travel once"
    assert len(part_files(p)) == 1

    # the same message again (same bytes): the body is not sent at all
    before = stats.payload_bytes
    p.primary.deliver("alice", with_attachment("copy 3", payload), folder="Sent")
    p.sync()
    p.assert_equal()
    assert stats.payload_bytes == before
    mbx = p.mailbox()
    assert mbx.shipped_raw_bytes == stats.raw_bytes and mbx.shipped_payload_bytes == stats.payload_bytes
    assert mbx.shipped_wire_bytes > 0 and mbx.captured_bytes >= mbx.shipped_raw_bytes


def test_a_damaged_part_is_never_replayed_and_is_fetched_again(tmp_path):
    p = Pipeline(tmp_path)
    payload = os.urandom(50_000)
    p.primary.deliver("alice", with_attachment("one", payload))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    while p.shipper.ship_once():
        pass
    (stored,) = part_files(p)
    data = bytearray(stored.read_bytes())
    data[100] ^= 0x01
    stored.write_bytes(bytes(data))  # disk damage after receipt, before replay
    with p.dst.tx() as s:
        rid = s.scalar(select(Replica.id))
    with pytest.raises(BodyCorrupt):
        p.replay.replay(rid, p.standby.open("alice"))
    assert sum(len(f.msgs) for f in p.standby.box("alice").values()) == 0, "damaged bytes must not be replayed"
    with p.dst.tx() as s:
        rep = s.get(Replica, rid)
        assert rep.received_seq == rep.applied_seq and "send it again" in rep.error
        assert s.scalar(select(InboxBody.sha256)) is None
    p.shipper.poll_progress()  # the source learns the DR side holds less and sends again
    p.sync()
    p.assert_equal()


def test_missing_part_answer_makes_the_source_send_it(tmp_path):
    p = Pipeline(tmp_path)
    payload = os.urandom(30_000)
    p.primary.deliver("alice", with_attachment("first", payload))
    p.sync()
    # the DR side's part vanishes (garbage collected by an older version, restored backup...)
    with p.dst.tx() as s:
        s.execute(InboxPart.__table__.delete())
        s.execute(InboxBody.__table__.delete())
    for f in part_files(p):
        f.unlink()
    p.primary.deliver("alice", with_attachment("second", payload))
    p.sync()
    p.assert_equal()


def test_garbage_collection_drops_unreferenced_bodies_and_parts(tmp_path):
    p = Pipeline(tmp_path)
    keep, drop = os.urandom(40_000), os.urandom(40_000)
    p.primary.deliver("alice", with_attachment("keep", keep))
    p.primary.deliver("alice", with_attachment("drop", drop))
    p.sync()
    assert len(part_files(p)) == 2
    report = p.bodies.collect_garbage(grace_seconds=0)
    assert report.parts_deleted == 0 and report.bodies_deleted == 0
    p.primary.expunge("alice", "INBOX", [2])
    p.sync()
    p.assert_equal()
    report = p.bodies.collect_garbage(grace_seconds=0)
    assert report.bodies_deleted == 1 and report.parts_deleted == 1
    (left,) = part_files(p)
    assert left.stat().st_size < 60_000
    p.primary.deliver("alice", with_attachment("keep again", keep))
    p.sync()
    p.assert_equal()


def test_a_body_that_does_not_reassemble_is_sent_again_unsplit(tmp_path, monkeypatch):
    import mailrepl.shared.engines.batch_builder as builder_module

    real_split = builder_module.split_message
    damaged: list[bytes] = []

    def faulty_split(raw: bytes, **kw):  # a splitter bug: the skeleton rebuilds other bytes
        damaged.append(raw)
        return real_split(raw.replace(b"see attached", b"see ATTACHED"), **kw)

    monkeypatch.setattr(builder_module, "split_message", faulty_split)
    p = Pipeline(tmp_path)
    payload = os.urandom(30_000)
    p.primary.deliver("alice", with_attachment("odd", payload))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    p.shipper.ship_once()
    with p.dst.tx() as s:
        assert s.scalar(select(InboxBody.sha256)) is None, "wrong bytes must never be stored"
        rep = s.scalar(select(Replica))
        assert rep.received_seq == 0
    assert len(damaged) == 1 and len(p.shipper.builder.send_whole) == 1
    p.sync()
    p.assert_equal()  # byte-exact on the standby: the body came unsplit the second time
    assert len(damaged) == 1, "a body asked for whole is not split again"
    with p.dst.tx() as s:
        assert s.scalar(select(InboxPart.key)) is None


def test_while_the_peer_lacks_nearly_every_body_one_question_asks_for_bodies_and_parts(tmp_path):
    """A seed: before the first answer, and after an answer that lacked every body, a batch asks for
    bodies and parts in one round trip; what the peer turns out to hold (a body, an attachment)
    still does not travel, and once it held more, the two questions come back."""
    p = Pipeline(tmp_path)
    p.shipper.builder.max_changes = 100
    asked: list[tuple[int, int]] = []  # (bodies, parts) per question
    ask = p.shipper.builder.held

    def held(shas, keys):
        asked.append((len(shas), len(keys)))
        return ask(shas, keys)

    p.shipper.builder.held = held
    shared = os.urandom(100_000)
    for i in range(4):
        p.primary.deliver("alice", with_attachment(f"first {i}", os.urandom(50_000)))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert p.shipper.ship_once()
    assert asked == [(4, 4)], "first batch, nothing known yet: bodies and parts at once"
    assert p.shipper.builder.lacked_share == 1.0

    # the peer already holds one body (the same bytes delivered again) and one attachment
    inbox = p.primary.box("alice")["INBOX"].msgs
    first = inbox[min(inbox)].body
    asked.clear()
    p.primary.deliver("alice", first, folder="Archive")  # a body the peer holds
    p.primary.deliver("alice", with_attachment("second 1", shared))
    p.primary.deliver("alice", with_attachment("second 2", shared))  # the same attachment twice
    p.primary.deliver("alice", with_attachment("second 3", os.urandom(50_000)))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    before = p.shipper.stats.payload_bytes
    assert p.shipper.ship_once()
    assert asked == [(4, 3)], "one question: four bodies, the three distinct parts of them"
    sent = p.shipper.stats.payload_bytes - before
    # base64 makes a part 1.37 times its bytes: the shared part once and the new one, no more
    # (the held body's attachment would add 68 KB, the shared part twice 137 KB)
    assert sent < 1.4 * (100_000 + 50_000) + 5_000, "the held body did not travel, the shared part once"
    assert p.shipper.builder.lacked_share == 0.75  # below the mark: two questions again
    while p.shipper.ship_once():
        pass
    p.sync()
    p.assert_equal()

    asked.clear()
    p.primary.deliver("alice", with_attachment("third", os.urandom(30_000)))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    assert p.shipper.ship_once()
    assert asked == [(1, 0), (0, 1)]
