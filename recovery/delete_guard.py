"""The mass-delete guard: a mailbox's deletions are held at the recovery gateway, not replayed.

Replication copies mistakes too: when a user, a broken client or ransomware deletes most of a
mailbox, the standby should not follow at once. The guard is the replay engine's gate
(``ReplayEngine(gate=…)``): before changes are played it counts the mailbox's deletions — expunges,
moves into a trash or junk folder, folder deletes (``GuardSettings``) — by capture time over a
sliding window. When they reach the configured number and share of the mailbox, it *trips*:

- from then on every deletion of that mailbox is set aside (kept as an ``inbox`` row in state
  ``held``), and so is every later change that touches a message or folder a held change touches
  (a flag change or a move of a message whose move to the trash is held, a message added to a
  folder whose delete is held, a rename onto it): the order of changes per message and per folder
  is kept, nothing is lost;
- everything else keeps flowing to the standby;
- the alarm (``mass-delete-hold``) is raised: mailbox status (``held_deletions``), ``/metrics``, a
  warning in the log and an entry in the audit log.

An operator then **releases** the held changes (played on the standby in their order: the
deletions were wanted) or **discards** the deletions (the standby keeps the messages; the held
changes that are not deletions are played, in order). Both clear the trip. Held changes and the
trip are in the state store, so they survive restarts (the sliding window of a mailbox that did
not trip starts afresh after a restart).

Deletions already played before the trip are not undone: the window is checked before each
replay pass over everything received, so a burst that arrives at once is held whole.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mailrepl.recovery.guard_settings import GuardSettings
from mailrepl.shared.alerts.model import Alarm
from mailrepl.shared.engines.replay import Group, ReplayEngine, ReplayReport
from mailrepl.shared.errors import StoreError
from mailrepl.shared.model import Change, Kind, utcnow
from mailrepl.shared.runtime.audit import AuditLog, AuditRecord
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import DeleteGuardState, IdMapEntry, InboxRow, Replica
from sqlalchemy import delete, func, select, update

__all__ = ["DeleteGuard", "HeldReplay", "is_deletion"]

log = logging.getLogger("mailrepl.guard")

SEP = "/"


def is_deletion(ch: Change, settings: GuardSettings) -> bool:
    if ch.kind in (Kind.MSG_EXPUNGE, Kind.FOLDER_DELETE):
        return True
    return ch.kind == Kind.MSG_MOVE and settings.is_trash(ch.new_folder) and not settings.is_trash(ch.folder)


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + SEP) or b.startswith(a + SEP)


@dataclass(frozen=True)
class _Trip:
    since: datetime
    deletions: int
    mailbox_messages: int


@dataclass
class _State:
    tripped: _Trip | None = None
    mids: set[int] = field(default_factory=set)  # messages a held change touches
    folders: set[str] = field(default_factory=set)  # folders a held change touches (deleted, renamed)
    recent: deque = field(default_factory=deque)  # capture times of deletions in the window

    def touches(self, ch: Change) -> bool:
        if ch.mid in self.mids or (ch.old_mid is not None and ch.old_mid in self.mids):
            return True
        if ch.kind.value.startswith("folder.") or ch.kind in (Kind.MSG_ADD, Kind.MSG_REPLACE, Kind.MSG_MOVE):
            names = [ch.folder] + ([ch.new_folder] if ch.new_folder else [])
            return any(_overlaps(n, f) for n in names for f in self.folders)
        return False

    def note(self, ch: Change) -> None:
        for mid in (ch.mid, ch.old_mid):
            if mid is not None:
                self.mids.add(mid)
        if ch.kind.value.startswith("folder."):
            self.folders.add(ch.folder)
            if ch.new_folder:
                self.folders.add(ch.new_folder)


class DeleteGuard:
    def __init__(self, store: Store, settings: GuardSettings, audit: AuditLog | None = None) -> None:
        self.store = store
        self.settings = settings
        self.audit = audit or AuditLog(store)
        self._states: dict[int, _State] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the gate

    def gate(self, rid: int, changes: Sequence[tuple[int, Change]]) -> tuple[int, frozenset[int]]:
        """``ReplayEngine`` gate: everything may be played; deletions (and what depends on them) held."""
        if not self.settings.enabled and not self._state(rid).tripped:
            return len(changes), frozenset()
        st = self._state(rid)
        if st.tripped is None:
            self._watch(rid, st, changes)
        if st.tripped is None:
            return len(changes), frozenset()
        held = set()
        for seq, ch in changes:
            if is_deletion(ch, self.settings) or st.touches(ch):
                held.add(seq)
                st.note(ch)
        return len(changes), frozenset(held)

    def _watch(self, rid: int, st: _State, changes: Sequence[tuple[int, Change]]) -> None:
        """Count the deletions among ``changes`` into the window; trip the guard when they reach the limits."""
        dels = [seq for seq, ch in changes if is_deletion(ch, self.settings)]
        if not dels:
            return
        with self.store.read() as s:
            times = dict(s.execute(select(InboxRow.seq, func.coalesce(InboxRow.captured_at, InboxRow.received_at))
                                   .where(InboxRow.replica_id == rid, InboxRow.seq >= dels[0],
                                          InboxRow.seq <= dels[-1])).all())
            messages = s.scalar(select(func.count()).select_from(IdMapEntry).where(IdMapEntry.replica_id == rid))
        window = timedelta(seconds=self.settings.window_seconds)
        for seq in dels:
            at = _aware(times.get(seq)) or utcnow()
            while st.recent and st.recent[0] < at - window:
                st.recent.popleft()
            st.recent.append(at)
            if self.settings.trips(len(st.recent), messages):
                self._trip(rid, st, len(st.recent), messages)
                return

    def _trip(self, rid: int, st: _State, deleted: int, messages: int) -> None:
        with self.store.tx() as s:
            rep = s.get(Replica, rid)
            row = s.get(DeleteGuardState, rid)
            if row is None:
                row = DeleteGuardState(replica_id=rid, since=utcnow(), deletions=deleted, mailbox_messages=messages)
                s.add(row)
            trip = _Trip(_aware(row.since), row.deletions, row.mailbox_messages)
            who = f"{rep.server}/{rep.address}"
        st.tripped = trip
        st.recent.clear()
        text = (f"{who}: {deleted} deletions within {self.settings.window_seconds:g}s of a mailbox of {messages} "
                "messages: its deletions are held until released or discarded")
        log.warning("mass-delete guard tripped: %s", text)
        self.audit.record(AuditRecord(at=utcnow(), principal="mass-delete-guard", role=None, method="HOLD",
                                      path="/api/v1/guard", target=text[:500], status=0))

    # ------------------------------------------------------------------ state

    def _state(self, rid: int) -> _State:
        with self._lock:
            st = self._states.get(rid)
            if st is not None:
                return st
            st = _State()
            with self.store.read() as s:
                row = s.get(DeleteGuardState, rid)
                if row is not None:
                    st.tripped = _Trip(_aware(row.since), row.deletions, row.mailbox_messages)
                for text in s.scalars(select(InboxRow.change).where(InboxRow.replica_id == rid,
                                                                    InboxRow.state == "held").order_by(InboxRow.seq)):
                    st.note(Change.from_dict(json.loads(text)))
            self._states[rid] = st
            return st

    def status(self, rid: int) -> dict | None:
        st = self._state(rid)
        with self.store.read() as s:
            held = s.scalar(select(func.count()).select_from(InboxRow).where(InboxRow.replica_id == rid,
                                                                             InboxRow.state == "held"))
        if st.tripped is None and not held:
            return None
        return {"tripped": st.tripped is not None,
                "since": st.tripped.since.isoformat() if st.tripped is not None else None,
                "deletions": st.tripped.deletions if st.tripped is not None else None,
                "mailbox_messages": st.tripped.mailbox_messages if st.tripped is not None else None,
                "held": held}

    def held_counts(self) -> dict[int, int]:
        """Replica id -> held changes, for every replica with some (or tripped)."""
        with self.store.read() as s:
            out = dict(s.execute(select(InboxRow.replica_id, func.count()).where(InboxRow.state == "held")
                                 .group_by(InboxRow.replica_id)).all())
            for rid in s.scalars(select(DeleteGuardState.replica_id)):
                out.setdefault(rid, 0)
        return out

    def holds(self, rid: int) -> list[dict] | None:
        """The mailbox detail's ``holds`` (the console shows each ``message``); None: nothing held."""
        st = self.status(rid)
        if st is None:
            return None
        since = f" since {st['since']}" if st["since"] else ""
        return [{**st, "message": f"{st['held']} changes held by the mass-delete guard{since}: release or discard "
                                  "them (mailrepl guard)"}]

    def tripped_ids(self) -> set[int]:
        with self.store.read() as s:
            return set(s.scalars(select(DeleteGuardState.replica_id)))

    def alarms(self) -> list[Alarm]:
        out = []
        with self.store.read() as s:
            rows = list(s.execute(select(DeleteGuardState, Replica).join(Replica, Replica.id == DeleteGuardState.replica_id)))
            counts = dict(s.execute(select(InboxRow.replica_id, func.count()).where(InboxRow.state == "held")
                                    .group_by(InboxRow.replica_id)).all())
            for row, rep in rows:
                n = counts.get(rep.id, 0)
                out.append(Alarm("mass-delete-hold", "critical",
                                 f"{row.deletions} deletions in a short time: {n} changes held until an operator "
                                 "releases or discards them (mailrepl guard)", since=_aware(row.since),
                                 address=rep.address, server=rep.server, count=n))
        return out

    # ------------------------------------------------------------------ release / discard

    def resolve(self, rid: int, session, *, discard: bool, engine: ReplayEngine) -> dict:
        """Play the held changes in order (``discard``: all but the deletions, which are dropped);
        clear the trip. The caller holds the replica's lock."""
        with self.store.read() as s:
            rows = [(seq, Change.from_dict(json.loads(text))) for seq, text in s.execute(
                select(InboxRow.seq, InboxRow.change).where(InboxRow.replica_id == rid, InboxRow.state == "held")
                .order_by(InboxRow.seq))]
        dropped = [seq for seq, ch in rows if discard and is_deletion(ch, self.settings)]
        if dropped:
            with self.store.tx() as s:
                s.execute(update(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq.in_(dropped),
                                                 InboxRow.state == "held").values(state="discarded"))
        play = [(seq, ch) for seq, ch in rows if seq not in set(dropped)]
        report = HeldReplay.from_engine(engine).play(rid, session, play)
        with self.store.tx() as s:
            s.execute(delete(DeleteGuardState).where(DeleteGuardState.replica_id == rid))
            rep = s.get(Replica, rid)
            rep.view_seq = None  # the standby changed outside the applied sequence: the view is rebuilt
        with self._lock:
            self._states.pop(rid, None)
        log.warning("replica %s: mass-delete guard %s: %d changes played, %d deletions dropped", rid,
                    "discarded" if discard else "released", report.applied, len(dropped))
        return {"played": report.applied, "discarded": len(dropped), "rejected": report.rejected}


class HeldReplay(ReplayEngine):
    """The replay engine playing held changes: the applied sequence number stays, rows become applied."""

    @classmethod
    def from_engine(cls, engine: ReplayEngine) -> HeldReplay:
        return cls(engine.store, engine.bodies, append_batch=engine.append_batch, append_bytes=engine.append_bytes,
                   keep_unknown=engine.keep_unknown)

    def play(self, rid: int, session, rows: Sequence[tuple[int, Change]]) -> ReplayReport:
        report = ReplayReport()
        self._reconcile(rid, session, report)
        for seq, ch in rows:  # one group per change: held changes need not be contiguous
            self._apply(rid, Group(ch.kind, ch.folder, [(seq, ch)]), session, report, {})
        return report

    def _advance(self, s, rid: int, g: Group, report: ReplayReport, skip_states=frozenset()) -> None:
        self._note_folders(s, rid, g)
        seqs = [seq for seq, _ in g.items if seq not in skip_states]
        if seqs:
            done = s.execute(update(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq.in_(seqs),
                                                    InboxRow.state == "held").values(state="applied")).rowcount
            if done != len(seqs):
                raise StoreError(f"replica {rid}: held changes {seqs} were played meanwhile", retryable=False)
        report.applied += len(g.items)


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)
