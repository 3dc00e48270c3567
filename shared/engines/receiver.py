"""Receiver: validates a batch, persists it, then acknowledges (durable before acknowledged).

A batch is stored in one transaction (one flush to disk however many mailboxes it carries),
committed before any answer is given. Per segment (one mailbox's contiguous range):

- the range must continue what is held (``received_seq + 1``) or overlap it; a range that
  starts further on is a *gap*: nothing is stored, ``resend_from`` says where to resume;
- an overlapping sequence number must carry the same change digest as before (a no-op);
  a different digest is a *conflict*: reported, nothing of the segment stored or overwritten;
- every body a new change refers to must be in the batch or already held; a body in the batch
  must reassemble (skeleton + parts from the batch or the blob store) to its SHA-256. A body or
  part that the sender was told is held but is not (garbage-collected meanwhile) is answered
  ``missing``: nothing of the segment is stored and the sender sends it again. A body that does
  not reassemble to its hash is answered ``missing`` with its hash in ``whole``: the sender sends
  it again unsplit, and wrong bytes are never stored.
"""
from __future__ import annotations

import logging
from datetime import datetime
from collections.abc import Collection, Sequence
from typing import Callable

from sqlalchemy import select

from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.progress_signal import ProgressSignal
from mailrepl.shared.model import utcnow
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import IN_CHUNK, chunks
from mailrepl.shared.store.models import InboxRow, RejectedMessage, Replica
from mailrepl.shared.store.row_writes import insert_rows
from mailrepl.shared.protocol.wire import Ack, Batch, Segment, SegmentResult

__all__ = ["Receiver"]

_INBOX_COLUMNS = ("replica_id", "seq", "change", "digest", "sha256", "state", "captured_at")
log = logging.getLogger("mailrepl.receiver")


class Receiver:
    def __init__(
        self,
        store: Store,
        bodies: BodyStore,
        route: Callable[[str], str | None],
        *,
        on_received: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.bodies = bodies
        self.route = route  # capturing server name -> server replayed into (None: no route)
        self.body_lock = bodies.lock
        self.on_received = on_received  # called with each replica id that received new changes
        self.signal = ProgressSignal()  # told of each replay pass that applied: waiting progress queries answer

    def ingest(self, batch: Batch) -> Ack:
        received: list[int] = []
        with self.body_lock, self.store.tx() as s:
            # a segment that is refused (gap, conflict, missing bodies) stores none of its changes
            # and leaves the others alone; an error rolls back the whole batch (sent again)
            results = [self._segment(s, batch, seg, received) for seg in batch.segments]
        if self.on_received is not None:
            for replica_id in received:  # committed: the replay of these mailboxes may start
                self.on_received(replica_id)
        return Ack(tuple(results))

    def continues(self, batch: Batch) -> bool:
        """Does every segment of ``batch`` continue (or overlap) what is stored of its mailbox?
        False: one would be answered as a gap now (a batch sent before it is still on its way)."""
        held: dict[tuple[str, str], int] = {}
        with self.store.read() as s:  # one read per batch, however many mailboxes it carries
            for part in chunks(sorted({seg.address for seg in batch.segments})):
                held.update(((server, address), seq) for server, address, seq in s.execute(
                    select(Replica.server, Replica.address, Replica.received_seq).where(
                        Replica.source_id == batch.source, Replica.address.in_(part))))
        return all(seg.range.first <= held.get((seg.server, seg.address), 0) + 1 for seg in batch.segments)

    def progress(self, source: str, only: Collection[int] | None = None) -> Ack:
        """Where every replica of ``source`` stands (asked every fraction of a second while
        anything waits to be applied): two reads whatever the number of replicas. ``only``:
        just these replicas (those applied since the asker's last answer)."""
        if only is not None and not only:
            return Ack(())
        with self.store.read() as s:
            # rows, not ORM objects: only the fields of the answer
            query = select(Replica.id, Replica.server, Replica.address, Replica.received_seq,
                           Replica.applied_seq, Replica.error).where(Replica.source_id == source)
            rejected_query = (select(RejectedMessage).join(Replica, Replica.id == RejectedMessage.replica_id)
                              .where(Replica.source_id == source).order_by(RejectedMessage.seq))
            if only is not None and len(only) <= IN_CHUNK:
                query = query.where(Replica.id.in_(list(only)))
                rejected_query = rejected_query.where(Replica.id.in_(list(only)))
            reps = s.execute(query).all()
            if only is not None:  # more than one statement takes: read all, keep those asked for
                reps = [rep for rep in reps if rep.id in only]
            rejected: dict[int, list[RejectedMessage]] = {}
            for r in s.scalars(rejected_query):
                rejected.setdefault(r.replica_id, []).append(r)
            return Ack(tuple(self._result(s, rep, "ok", rejected=rejected.get(rep.id, ())) for rep in reps))

    # ------------------------------------------------------------------ internals

    def _result(self, s, rep: Replica, status: str, rejected: Sequence[RejectedMessage] | None = None,
                **kw) -> SegmentResult:
        """``rejected``: the replica's rejected messages in sequence order, if the caller read them."""
        if rejected is None:
            rejected = s.scalars(
                select(RejectedMessage).where(RejectedMessage.replica_id == rep.id).order_by(RejectedMessage.seq))
        rejected = tuple(
            {"seq": r.seq, "folder": r.folder, "reason": r.reason,
             **{k: v for k, v in (("message_id", r.message_id), ("subject", r.subject), ("date", r.msg_date)) if v}}
            for r in rejected
        )
        return SegmentResult(
            server=rep.server, address=rep.address, status=status, acked=rep.received_seq,
            applied=rep.applied_seq, rejected=rejected, dr_error=rep.error, **kw,
        )

    def _segment(self, s, batch: Batch, seg: Segment, received: list[int]) -> SegmentResult:
        target = self.route(seg.server)
        if target is None:
            return SegmentResult(
                server=seg.server, address=seg.address, status="error", acked=0,
                detail=f"no standby server is configured for primary server {seg.server!r}",
            )
        rep = s.scalar(
            select(Replica).where(
                Replica.source_id == batch.source, Replica.server == seg.server, Replica.address == seg.address
            )
        )
        if rep is None:
            rep = Replica(source_id=batch.source, server=seg.server, address=seg.address, target=target)
            s.add(rep)
            s.flush()
        expected = rep.received_seq + 1
        if seg.range.first > expected:
            return self._result(s, rep, "gap", resend_from=expected,
                                detail=f"expected sequence {expected}, batch starts at {seg.range.first}")
        encoded = [c.encoded() for c in seg.changes]  # (stored JSON, digest)
        digests = [digest for _, digest in encoded]
        overlap_last = min(seg.range.last, rep.received_seq)
        if overlap_last >= seg.range.first:
            held = dict(
                s.execute(
                    select(InboxRow.seq, InboxRow.digest).where(
                        InboxRow.replica_id == rep.id,
                        InboxRow.seq >= seg.range.first,
                        InboxRow.seq <= overlap_last,
                    )
                ).all()
            )
            for seq in range(seg.range.first, overlap_last + 1):
                old = held.get(seq)
                if old is not None and old != digests[seq - seg.range.first]:
                    detail = f"sequence {seq} of {seg.server}/{seg.address} differs from what was received before"
                    log.error("conflict: %s", detail)
                    rep.phase, rep.error = "error", f"conflict: {detail}"
                    return self._result(s, rep, "conflict", detail=detail)
        new = [
            (seq, ch, encoded[seq - seg.range.first], seg.captured[seq - seg.range.first] if seg.captured else "")
            for seq, ch in zip(seg.range, seg.changes)
            if seq > rep.received_seq
        ]
        staged = self.bodies.stage(s, (ch.sha256 for _, ch, _, _ in new if ch.sha256 is not None),
                                   batch.messages, batch.parts)
        if staged.missing or staged.whole:
            # told it was held, but it is not (collected meanwhile or damaged), or it does not
            # reassemble to its hash (never stored, never replayed): ask again, those whole
            return self._result(s, rep, "missing", missing=tuple(staged.missing), whole=tuple(staged.whole),
                                detail=f"{len(staged.missing)} bodies or parts must be sent again, "
                                       f"{len(staged.whole)} of them unsplit")
        self.bodies.store_staged(s, staged)
        if new:
            insert_rows(s, InboxRow.__table__, _INBOX_COLUMNS, [
                (rep.id, seq, text, digest, ch.sha256, "received", _parse(captured))
                for seq, ch, (text, digest), captured in new
            ])
        if new:
            rep.received_seq = new[-1][0]
            rep.last_received_at = utcnow()
            received.append(rep.id)
        return self._result(s, rep, "ok")


def _parse(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
