"""History of each replicated mailbox at the recovery gateway: kept, snapshotted, pruned, measured.

With a retention (``[history]``, ``mailrepl.recovery.history_settings``) the applied changes of a
mailbox (``inbox`` rows, with their capture times) and the bodies they refer to are kept for that
long. Now and then (every ``snapshot_every_changes`` applied changes or ``snapshot_every_hours``)
the keeper folds the changes applied since the last base snapshot onto it and stores the result
(``history_snapshot``: folders, messages with SHA-256, flags, internal date, folder; renames), so
a restore replays from the nearest snapshot, never from the beginning. The first snapshot of a
mailbox is the empty one before its first change.

Pruning keeps everything a restore to any time within the retention needs: the newest snapshot
taken at or before ``now - retention`` (the *base*) and every change after it; older changes and
snapshots go. Garbage collection keeps the bodies that the kept changes and snapshots refer to
(``BodyStore.collect_garbage(history_of=…)``).

A mailbox whose earlier changes are gone (history switched on after a failback re-based it, whose
changes were dropped) has no starting point: the keeper reports ``unavailable`` for it and takes
no snapshot; restores of it are refused with the reason.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailrepl.recovery.history_settings import HistorySettings
from mailrepl.recovery.restore_plan import Catalogue, HistoryGap, fold
from mailrepl.shared.model import Change, utcnow
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import (
    HistorySnapshot,
    HistorySnapshotBody,
    IdMapEntry,
    InboxBody,
    InboxRow,
    Replica,
)
from sqlalchemy import delete, func, insert, select

__all__ = ["WINDOW", "HistoryKeeper", "HistorySpace"]

log = logging.getLogger("mailrepl.history")

WINDOW = 5000  # changes read per query while folding


@dataclass(frozen=True)
class HistorySpace:
    """What one mailbox's history holds and costs."""

    server: str
    address: str
    retention_days: float
    changes: int  # applied changes kept
    change_bytes: int  # their stored JSON
    snapshots: int
    snapshot_bytes: int  # compressed catalogues
    body_bytes: int  # messages kept only for history (not on the standby any more), whole size
    oldest: datetime | None  # the earliest time a restore can reach (None: see from_start)
    from_start: bool  # history reaches back to the mailbox's first change
    newest_snapshot_seq: int | None
    unavailable: str | None = None  # why no restore is possible

    @property
    def total_bytes(self) -> int:
        return self.change_bytes + self.snapshot_bytes + self.body_bytes

    def to_json(self) -> dict:
        return {"server": self.server, "address": self.address, "retention_days": self.retention_days,
                    "changes": self.changes, "change_bytes": self.change_bytes, "snapshots": self.snapshots,
                    "snapshot_bytes": self.snapshot_bytes, "body_bytes": self.body_bytes, "total_bytes": self.total_bytes,
                    "oldest": self.oldest.isoformat() if self.oldest else None, "from_start": self.from_start,
                    "newest_snapshot_seq": self.newest_snapshot_seq, "unavailable": self.unavailable}


class HistoryKeeper:
    def __init__(self, store: Store, settings: HistorySettings) -> None:
        self.store = store
        self.settings = settings
        self._space: dict[int, HistorySpace] = {}  # replica id -> last measured
        self._lock = threading.Lock()  # one maintenance run at a time

    # ------------------------------------------------------------------ policy

    def retention(self, rep: Replica) -> float:
        return self.settings.retention_seconds(rep.server, rep.address)

    def history_replicas(self) -> list[int]:
        """Replicas whose history is kept (garbage collection keeps what their changes refer to)."""
        with self.store.read() as s:
            return [rep.id for rep in s.scalars(select(Replica)) if self.retention(rep) > 0]

    # ------------------------------------------------------------------ maintenance

    def maintain(self, now: datetime | None = None) -> dict:
        """Snapshots where due, pruning, space measured; for every replica. Returns counts."""
        now = now or utcnow()
        done = {"snapshots": 0, "pruned_changes": 0, "pruned_snapshots": 0}
        with self._lock:
            with self.store.read() as s:
                reps = [(rep.id, self.retention(rep)) for rep in s.scalars(select(Replica))]
            for rid, keep in reps:
                if keep <= 0:
                    done["pruned_snapshots"] += self._drop_snapshots(rid)
                    self._space.pop(rid, None)
                    continue
                try:
                    if self.snapshot_if_due(rid, now):
                        done["snapshots"] += 1
                except HistoryGap as exc:
                    log.warning("replica %s: no history snapshot: %s", rid, exc)
                changes, snaps = self.prune(rid, now)
                done["pruned_changes"] += changes
                done["pruned_snapshots"] += snaps
                self._space[rid] = self.measure(rid)
        if done["snapshots"] or done["pruned_changes"]:
            log.info("history: %s", done)
        return done

    def snapshot_if_due(self, rid: int, now: datetime | None = None) -> bool:
        now = now or utcnow()
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            last = s.execute(select(HistorySnapshot.seq, HistorySnapshot.taken_at)
                             .where(HistorySnapshot.replica_id == rid)
                             .order_by(HistorySnapshot.seq.desc()).limit(1)).first()
            applied = rep.applied_seq
        if last is None:
            return self.snapshot(rid) is not None  # the empty start (or what is applied, from it)
        seq, taken = last
        if applied <= seq:
            return False
        age = (now - _aware(taken)).total_seconds()
        if applied - seq >= self.settings.snapshot_every_changes or age >= self.settings.snapshot_every_hours * 3600:
            return self.snapshot(rid) is not None
        return False

    def snapshot(self, rid: int) -> Catalogue | None:
        """Store the catalogue as of the applied sequence number (None: nothing new)."""
        with self.store.read() as s:
            applied = s.get(Replica, rid).applied_seq
        base = self._newest_snapshot(rid, upto=applied)
        if base is None:
            first = self._first_kept_seq(rid)
            if first is not None and first > 1:
                raise HistoryGap(f"changes before {first} are gone (a failback re-based this mailbox): "
                                 "history has no starting point")
            base = Catalogue()
            self._store_snapshot(rid, base)  # the empty start: a restore may reach back to the beginning
            if applied == 0:
                return base
        elif base.seq >= applied:
            return None
        cat = fold(base, self.rows(rid, base.seq + 1, applied))
        if cat.seq != applied:
            raise HistoryGap(f"history stops at change {cat.seq}, {applied} are applied")
        self._store_snapshot(rid, cat)
        return cat

    def prune(self, rid: int, now: datetime | None = None) -> tuple[int, int]:
        """Drop changes and snapshots no restore within the retention needs; (changes, snapshots)."""
        now = now or utcnow()
        with self.store.read() as s:
            keep = self.retention(s.get(Replica, rid))
        cutoff = now - timedelta(seconds=keep)
        with self.store.tx() as s:
            base = s.execute(
                select(HistorySnapshot.id, HistorySnapshot.seq).where(
                    HistorySnapshot.replica_id == rid,
                    (HistorySnapshot.at.is_(None)) | (HistorySnapshot.at <= cutoff))
                .order_by(HistorySnapshot.seq.desc()).limit(1)).first()
            if base is None:
                return 0, 0
            _, base_seq = base
            changes = s.execute(delete(InboxRow).where(
                InboxRow.replica_id == rid, InboxRow.seq <= base_seq,
                InboxRow.state.not_in(("received", "held")))).rowcount  # held: a guard's, until released
            old = list(s.scalars(select(HistorySnapshot.id).where(HistorySnapshot.replica_id == rid,
                                                                  HistorySnapshot.seq < base_seq)))
            for part in chunks(old):
                s.execute(delete(HistorySnapshotBody).where(HistorySnapshotBody.snapshot_id.in_(part)))
                s.execute(delete(HistorySnapshot).where(HistorySnapshot.id.in_(part)))
        return changes or 0, len(old)

    # ------------------------------------------------------------------ reading

    def rows(self, rid: int, first: int, last: int | None = None):
        """Kept changes ``first..last`` (all received ones without ``last``): (seq, change, capture
        time), read in windows; stops at a gap."""
        expect = first
        while True:
            with self.store.read() as s:
                q = (select(InboxRow.seq, InboxRow.change, InboxRow.captured_at, InboxRow.received_at)
                     .where(InboxRow.replica_id == rid, InboxRow.seq >= expect).order_by(InboxRow.seq).limit(WINDOW))
                if last is not None:
                    q = q.where(InboxRow.seq <= last)
                batch = list(s.execute(q))
            if not batch:
                return
            for seq, text, captured, received in batch:
                if seq != expect:
                    return
                yield seq, Change.from_dict(json.loads(text)), _aware(captured or received)
                expect += 1

    def at(self, rid: int, when: datetime) -> Catalogue:
        """The mailbox as it was at ``when`` (``HistoryGap`` if history does not reach it)."""
        when = when.astimezone(UTC)
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            if self.retention(rep) <= 0:
                raise HistoryGap(f"no history is kept for {rep.address} (history retention is 0)")
            row = s.execute(select(HistorySnapshot.data).where(
                HistorySnapshot.replica_id == rid, (HistorySnapshot.at.is_(None)) | (HistorySnapshot.at <= when))
                .order_by(HistorySnapshot.seq.desc()).limit(1)).first()
            oldest = s.scalar(select(func.min(HistorySnapshot.at)).where(HistorySnapshot.replica_id == rid))
            received = rep.received_seq
        if row is None:
            if oldest is None:
                raise HistoryGap(f"no history snapshot of {rep.address} yet")
            raise HistoryGap(f"history of {rep.address} reaches back to {_aware(oldest).isoformat()}, "
                             f"not to {when.isoformat()}")
        base = Catalogue.decode(row[0])
        cat = fold(base, self.rows(rid, base.seq + 1, received), until=when)
        if cat.seq < received:
            with self.store.read() as s:
                nxt = s.execute(select(InboxRow.captured_at, InboxRow.received_at).where(
                    InboxRow.replica_id == rid, InboxRow.seq == cat.seq + 1)).first()
            if nxt is None:
                raise HistoryGap(f"change {cat.seq + 1} of {rep.address} is missing from history")
            if _aware(nxt[0] or nxt[1]) <= when:  # pragma: no cover - fold stops only at a later one
                raise HistoryGap(f"history of {rep.address} stops at change {cat.seq}")
        return cat

    def space(self, rid: int, fresh: bool = False) -> HistorySpace | None:
        if fresh or rid not in self._space:
            with self.store.read() as s:
                rep = s.get(Replica, rid)
                if rep is None or self.retention(rep) <= 0:
                    return None
            self._space[rid] = self.measure(rid)
        return self._space.get(rid)

    def space_of(self, rid: int, server: str, address: str) -> HistorySpace | None:
        """``space(rid)`` for a replica whose names the caller has read: no query unless its
        history is kept and not measured yet (a listing of every mailbox asks for each)."""
        if rid in self._space:
            return self._space[rid]
        if self.settings.retention_seconds(server, address) <= 0:
            return None
        return self.space(rid)

    def spaces(self) -> list[HistorySpace]:
        return list(self._space.values())

    def measure(self, rid: int) -> HistorySpace:
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            applied = (InboxRow.replica_id == rid) & (InboxRow.state != "received")
            changes, change_bytes = s.execute(select(func.count(), func.coalesce(func.sum(func.length(InboxRow.change)), 0))
                                              .where(applied)).one()
            snaps, snap_bytes, newest = s.execute(
                select(func.count(), func.coalesce(func.sum(func.length(HistorySnapshot.data)), 0),
                       func.max(HistorySnapshot.seq)).where(HistorySnapshot.replica_id == rid)).one()
            oldest = s.execute(select(HistorySnapshot.at, HistorySnapshot.seq).where(HistorySnapshot.replica_id == rid)
                               .order_by(HistorySnapshot.seq).limit(1)).first()
            held = (select(InboxRow.sha256).where(applied, InboxRow.sha256.is_not(None))
                    .union(select(HistorySnapshotBody.sha256).join(
                        HistorySnapshot, HistorySnapshot.id == HistorySnapshotBody.snapshot_id)
                        .where(HistorySnapshot.replica_id == rid))).subquery()
            live = select(IdMapEntry.sha256).where(IdMapEntry.replica_id == rid)
            body_bytes = s.scalar(select(func.coalesce(func.sum(InboxBody.size), 0)).where(
                InboxBody.sha256.in_(select(held.c.sha256)), InboxBody.sha256.not_in(live)))
            server, address, keep = rep.server, rep.address, self.retention(rep)
        unavailable = None
        if oldest is None:
            first = self._first_kept_seq(rid)
            unavailable = ("changes before the first kept one are gone: history has no starting point"
                           if first is not None and first > 1 else "no snapshot yet")
        return HistorySpace(server=server, address=address, retention_days=keep / 86400, changes=changes,
                            change_bytes=int(change_bytes), snapshots=snaps, snapshot_bytes=int(snap_bytes),
                            body_bytes=int(body_bytes or 0), oldest=_aware(oldest[0]) if oldest else None,
                            from_start=oldest is not None and oldest[1] == 0,
                            newest_snapshot_seq=newest, unavailable=unavailable)

    # ------------------------------------------------------------------ internals

    def _newest_snapshot(self, rid: int, upto: int) -> Catalogue | None:
        with self.store.read() as s:
            data = s.scalar(select(HistorySnapshot.data).where(HistorySnapshot.replica_id == rid,
                                                               HistorySnapshot.seq <= upto)
                            .order_by(HistorySnapshot.seq.desc()).limit(1))
        return Catalogue.decode(data) if data is not None else None

    def _first_kept_seq(self, rid: int) -> int | None:
        with self.store.read() as s:
            return s.scalar(select(func.min(InboxRow.seq)).where(InboxRow.replica_id == rid))

    def _store_snapshot(self, rid: int, cat: Catalogue) -> None:
        data = cat.encode()
        with self.store.tx() as s:
            if s.scalar(select(HistorySnapshot.id).where(HistorySnapshot.replica_id == rid,
                                                         HistorySnapshot.seq == cat.seq)) is not None:
                return
            snap = HistorySnapshot(replica_id=rid, seq=cat.seq, at=cat.at, messages=len(cat.messages), data=data)
            s.add(snap)
            s.flush()
            shas = sorted(cat.shas())
            if shas:
                s.execute(insert(HistorySnapshotBody), [{"snapshot_id": snap.id, "sha256": sha} for sha in shas])
        log.debug("replica %s: history snapshot at change %d (%d messages, %d bytes)", rid, cat.seq,
                  len(cat.messages), len(data))

    def _drop_snapshots(self, rid: int) -> int:
        with self.store.tx() as s:
            ids = list(s.scalars(select(HistorySnapshot.id).where(HistorySnapshot.replica_id == rid)))
            for part in chunks(ids):
                s.execute(delete(HistorySnapshotBody).where(HistorySnapshotBody.snapshot_id.in_(part)))
                s.execute(delete(HistorySnapshot).where(HistorySnapshot.id.in_(part)))
        return len(ids)


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)


