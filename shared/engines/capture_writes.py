"""What a capture commit writes besides the capture state: sequenced outbox rows and captured
messages (bodies, catalogue rows, their ``msg.add`` / ``msg.replace`` changes).

Both run inside the caller's transaction, the one that moves the folder's cursor or pending
work: the changes commit with the cursor advance, or not at all.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mailrepl.shared.adapters.base import FetchedMessage
from mailrepl.shared.capture_state import CaptureState, NewEntry
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import Change, Kind, flags_text, format_internaldate
from mailrepl.shared.store import Store
from mailrepl.shared.store.body_spool import SPOOL_MIN_BYTES
from mailrepl.shared.store.models import Mailbox, OutboxBody, OutboxRow
from mailrepl.shared.store.row_writes import insert_rows
from sqlalchemy import event, select
from sqlalchemy.orm import Session

__all__ = ["CycleReport", "Seq", "Spooled", "body_hashes", "expunge_unreplaced", "release_segment", "spool_bodies",
           "write_messages"]

_OUTBOX = OutboxRow.__table__
_OUTBOX_BODY = OutboxBody.__table__
_OUTBOX_COLUMNS = ("mailbox_id", "seq", "change", "digest", "sha256", "size")


@dataclass
class CycleReport:
    changes: int = 0
    messages: int = 0
    bytes: int = 0
    pending: int = 0  # messages still to capture after this cycle (0 = caught up)
    paused: str | None = None  # why the cycle stopped before catching up (queue bound, disk full)
    wrote: bool = False  # committed something (and with it ``Mailbox.last_capture_at``)


class Seq:
    """Hands out sequence numbers of one mailbox inside one transaction.

    The outbox rows are collected and written with one multi-row insert when the transaction
    commits (before its flush: the rows commit with the cursor advance, or not at all), not as
    ORM objects one by one."""

    def __init__(self, session: Session, mailbox: Mailbox, report: CycleReport) -> None:
        self.s, self.mbx, self.report = session, mailbox, report
        self.rows: list[tuple] = []  # _OUTBOX_COLUMNS
        event.listen(session, "before_commit", self._write, once=True)

    def emit(self, change: Change, size: int = 0) -> int:
        self.mbx.last_seq += 1
        text, digest = change.encoded()
        self.rows.append((self.mbx.id, self.mbx.last_seq, text, digest, change.sha256, size))
        self.report.changes += 1
        return self.mbx.last_seq

    def _write(self, session: Session) -> None:
        if self.rows:
            insert_rows(session, _OUTBOX, _OUTBOX_COLUMNS, self.rows)
            self.rows = []


def body_hashes(batch: Sequence[FetchedMessage]) -> list[str]:
    """SHA-256 of each body (computed before the transaction: it holds the write lock)."""
    return [hashlib.sha256(msg.body).hexdigest() for msg in batch]


@dataclass(frozen=True)
class Spooled:
    """A chunk's bodies written to a spool segment before its transaction: where each one is."""
    segment: str
    placed: Mapping[str, tuple[int, int]]  # sha -> (offset, stored length)


def spool_bodies(store: Store, batch: Sequence[FetchedMessage], shas: Sequence[str]) -> Spooled | None:
    """A bulk chunk's bodies (from ``SPOOL_MIN_BYTES``, with a spool) written to one segment and
    flushed, outside the transaction and its locks: other writers do not wait for the flush.
    None for a chunk whose bodies go into rows. The caller releases an unused segment
    (``release_segment``)."""
    unique: dict[str, bytes] = {}
    for msg, sha in zip(batch, shas):
        unique.setdefault(sha, msg.body)
    return _spool(store, unique)


def _spool(store: Store, bodies: Mapping[str, bytes]) -> Spooled | None:
    """``bodies`` (sha -> body) in a new segment, flushed; None without a spool or below
    ``SPOOL_MIN_BYTES`` (they go into rows)."""
    spool = store.spool
    if spool is None or sum(len(v) for v in bodies.values()) < SPOOL_MIN_BYTES:
        return None
    placed = spool.write(list(bodies.items()))
    return Spooled(placed[0][0], {sha: (at, n) for sha, (_, at, n) in zip(bodies, placed)})


def release_segment(store: Store, spooled: Spooled, *, used: bool | None) -> None:
    """After the chunk's transaction: remove its segment unless a committed row names it
    (``used``; None: the transaction failed, the store is asked, and the segment is left for the
    start-up sweep if it cannot answer)."""
    if used is None:
        try:
            with store.read() as s:
                used = s.scalar(select(OutboxBody.sha256).where(OutboxBody.segment == spooled.segment).limit(1)) \
                    is not None
        except MailreplError:
            return
    if not used:
        store.spool.discard([spooled.segment])


def write_messages(s: Session, st: CaptureState, seq: Seq, folder_id: int, name: str,
                   batch: Sequence[FetchedMessage], shas: Sequence[str], replace: dict[int, int],
                   store: Store, report: CycleReport, spooled: Spooled | None = None) -> bool:
    """Queue the captured messages ``batch`` of folder ``folder_id`` (``name``): their bodies not
    yet held, their catalogue rows, one change each (a draft edit of ``replace``, new uid -> the
    old draft's message id, is a ``msg.replace``; the entries it used are taken out of it).
    Set-based: one query for the bodies already held, one insert for the new ones (in rows, or
    in one spool segment: ``spooled``, written before, or one written now, see
    ``_store_bodies``), one for the catalogue rows (their ids are the changes' message ids).
    Whether a row now names ``spooled``'s segment."""
    mbx = seq.mbx
    have = set(s.scalars(select(OutboxBody.sha256).where(OutboxBody.sha256.in_(set(shas))))) if shas else set()
    fresh: dict[str, bytes] = {}
    for msg, sha in zip(batch, shas):
        if sha not in have:
            fresh.setdefault(sha, msg.body)
    used = bool(fresh) and spooled is not None
    if fresh:
        _store_bodies(s, store, fresh, spooled)
    texts = [flags_text(msg.flags) for msg in batch]
    mids = st.add_entries(folder_id, [NewEntry(msg.uid, msg.guid, sha, len(msg.body), text)
                                      for msg, sha, text in zip(batch, shas, texts)])
    seeding = mbx.phase == "seeding"
    for msg, sha, mid, text in zip(batch, shas, mids, texts):
        fields = {
            "mid": mid, "sha256": sha, "size": len(msg.body), "flags": tuple(text.split()),
            "internaldate": format_internaldate(msg.internaldate),
        }
        old_mid = replace.pop(msg.uid, None)
        if old_mid is not None and st.drop_entry(old_mid):
            seq.emit(Change(Kind.MSG_REPLACE, name, old_mid=old_mid, **fields), size=len(msg.body))
        else:
            seq.emit(Change(Kind.MSG_ADD, name, **fields), size=len(msg.body))
        report.messages += 1
        report.bytes += len(msg.body)
        mbx.captured_bytes += len(msg.body)
        if seeding:
            mbx.seed_msgs_done += 1
            mbx.seed_bytes_done += len(msg.body)
    return used


def _store_bodies(s: Session, store: Store, fresh: Mapping[str, bytes], spooled: Spooled | None) -> None:
    """The new bodies of a chunk: in ``spooled``'s segment (written before the transaction), else
    in their rows, or, from ``SPOOL_MIN_BYTES`` and with a spool, in one segment written durably
    now (before this transaction commits; a capture cycle's own small fetches come this way),
    which a rollback removes."""
    if spooled is None:
        spooled = _spool(store, fresh)
        if spooled is None:
            sealer = store.sealer
            insert_rows(s, _OUTBOX_BODY, ("sha256", "size", "data"),
                        [(k, len(v), sealer.seal(v, k)) for k, v in fresh.items()])
            return
        segment, spool = spooled.segment, store.spool
        event.listen(s, "after_rollback", lambda _s: spool.discard([segment]), once=True)
    insert_rows(s, _OUTBOX_BODY, ("sha256", "size", "segment", "seg_offset", "seg_length"),
                [(k, len(v), spooled.segment, *spooled.placed[k]) for k, v in fresh.items()])


def expunge_unreplaced(st: CaptureState, seq: Seq, name: str, replace: Mapping[int, int]) -> None:
    """Drafts whose replacement vanished before it was captured: a plain expunge each."""
    for old_mid in replace.values():
        if st.drop_entry(old_mid):
            seq.emit(Change(Kind.MSG_EXPUNGE, name, mid=old_mid))
