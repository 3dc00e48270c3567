"""Which received changes of a mailbox the replay engine may play now (``ReplayEngine(gate=…)``).

Two rules, in this order:

1. **Lagged copy** (``[lag] replay_delay``): a change is eligible only once its capture time is
   older than the mailbox's delay; the standby trails the primary by the delay, the changes
   waiting are kept. At a cutover of a lagged mailbox (while it is ``cutting-over``) the admin's
   choice replaces the delay: play everything (default), play up to a time T (the changes
   captured after T are *set aside*: not applied, kept in the inbox, listed), or play nothing more.
2. **Mass-delete guard** (``mailrepl.recovery.delete_guard``) on what rule 1 lets through.

The gate answers a prefix (never reorders): a change is played only after every earlier one.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from mailrepl.recovery.lag_settings import LagSettings
from mailrepl.shared.engines.replay import Gate
from mailrepl.shared.model import Change, utcnow
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import InboxRow, Replica
from mailrepl.shared.store.chunks import chunks
from sqlalchemy import case, func, select

__all__ = ["CUTOVER_PLAYS", "ReplayGate"]

log = logging.getLogger("mailrepl.gate")

CUTOVER_PLAYS = ("all", "until", "none")


class ReplayGate:
    def __init__(self, store: Store, lag: LagSettings, then: Gate | None = None) -> None:
        self.store = store
        self.lag = lag
        self.then = then
        self._cutover: dict[int, tuple[str, datetime | None]] = {}  # replica id -> (play, until)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ cutover choice

    def at_cutover(self, replica_ids: Sequence[int], play: str, until: datetime | None = None) -> None:
        """What the next drain of these (lagged) mailboxes plays: "all", "until" ``until``, or "none"."""
        if play not in CUTOVER_PLAYS or (play == "until") != (until is not None):
            raise ValueError("play is all, none, or until with a time")
        with self._lock:
            for rid in replica_ids:
                self._cutover[rid] = (play, until)

    def delay(self, rep: Replica) -> float:
        return self.lag.delay(rep.server, rep.address)

    # ------------------------------------------------------------------ the gate

    def __call__(self, rid: int, changes: Sequence[tuple[int, Change]]) -> tuple[int, frozenset[int]]:
        n = self._eligible(rid, changes)
        if self.then is None or n == 0:
            return n, frozenset()
        m, held = self.then(rid, changes[:n])
        return min(n, m), held

    def _eligible(self, rid: int, changes: Sequence[tuple[int, Change]]) -> int:
        if not self.lag.enabled:  # no mailbox has a delay: nothing to read (at every replay step)
            return len(changes)
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            delay, state = self.delay(rep), rep.site_state
        limit: datetime | None
        if state == SiteState.CUTTING_OVER.value and delay > 0:
            with self._lock:
                play, until = self._cutover.get(rid, ("all", None))
            if play == "all":
                return len(changes)
            if play == "none":
                return 0
            limit = until
        elif delay > 0:
            limit = utcnow() - timedelta(seconds=delay)
        else:
            return len(changes)
        with self.store.read() as s:
            times = dict(s.execute(select(InboxRow.seq, func.coalesce(InboxRow.captured_at, InboxRow.received_at))
                                   .where(InboxRow.replica_id == rid, InboxRow.seq >= changes[0][0],
                                          InboxRow.seq <= changes[-1][0])).all())
        n = 0
        for seq, _ in changes:
            at = _aware(times.get(seq))
            if at is None or at > limit:
                break
            n += 1
        return n

    # ------------------------------------------------------------------ status

    def waiting(self, rid: int) -> dict | None:
        """A lagged mailbox's delay, how many received changes wait for it and the oldest's capture time."""
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            delay = self.delay(rep)
            if delay <= 0:
                return None
            due = utcnow() - timedelta(seconds=delay)
            captured = func.coalesce(InboxRow.captured_at, InboxRow.received_at)
            count, oldest = s.execute(select(func.count(), func.min(captured)).where(
                InboxRow.replica_id == rid, InboxRow.seq > rep.applied_seq, InboxRow.state == "received")).one()
            not_due = s.scalar(select(func.count()).where(InboxRow.replica_id == rid, InboxRow.seq > rep.applied_seq,
                                                          InboxRow.state == "received", captured > due))
        return {"replay_delay_seconds": delay, "waiting": count, "not_yet_due": not_due,
                "oldest_waiting": _aware(oldest).isoformat() if oldest else None}

    def waiting_all(self, replicas: Sequence[tuple[int, str, str]]) -> dict[int, dict]:
        """``waiting`` of many replicas ((id, server, address)), the lagged ones only, in one
        query per distinct delay (a listing of every mailbox: not one query per mailbox)."""
        by_delay: dict[float, list[int]] = {}
        for rid, server, address in replicas:
            delay = self.lag.delay(server, address)
            if delay > 0:
                by_delay.setdefault(delay, []).append(rid)
        out: dict[int, dict] = {}
        captured = func.coalesce(InboxRow.captured_at, InboxRow.received_at)
        with self.store.read() as s:
            for delay, rids in by_delay.items():
                due = utcnow() - timedelta(seconds=delay)
                found = {}
                for part in chunks(rids):
                    found.update({rid: (count, oldest, not_due) for rid, count, oldest, not_due in s.execute(
                        select(InboxRow.replica_id, func.count(), func.min(captured),
                               func.count(case((captured > due, 1))))
                        .join(Replica, Replica.id == InboxRow.replica_id)
                        .where(InboxRow.replica_id.in_(part), InboxRow.seq > Replica.applied_seq,
                               InboxRow.state == "received")
                        .group_by(InboxRow.replica_id))})
                for rid in rids:
                    count, oldest, not_due = found.get(rid, (0, None, 0))
                    out[rid] = {"replay_delay_seconds": delay, "waiting": count, "not_yet_due": not_due,
                                "oldest_waiting": _aware(oldest).isoformat() if oldest else None}
        return out

    def due(self, rid: int) -> bool:
        """Whether a lagged mailbox has a received change old enough to play (the replay workers ask)."""
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            delay = self.delay(rep)
            if delay <= 0 or rep.site_state != SiteState.REPLICATING.value:
                return True
            at = s.execute(select(InboxRow.captured_at, InboxRow.received_at).where(
                InboxRow.replica_id == rid, InboxRow.seq == rep.applied_seq + 1)).first()
        return at is not None and _aware(at[0] or at[1]) <= utcnow() - timedelta(seconds=delay)

    def set_aside(self, rid: int) -> list[dict]:
        """The changes a cutover left out (received after the cut-over sequence, never applied)."""
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            if rep.cutover_seq is None:
                return []
            rows = s.execute(select(InboxRow.seq, InboxRow.change, InboxRow.captured_at).where(
                InboxRow.replica_id == rid, InboxRow.seq > rep.cutover_seq, InboxRow.state == "received")
                .order_by(InboxRow.seq))
            out = []
            for seq, text, at in rows:
                ch = json.loads(text)
                out.append({"seq": seq, "kind": ch["kind"], "folder": ch["folder"],
                            "new_folder": ch.get("new_folder"), "sha256": ch.get("sha256"),
                            "captured_at": _aware(at).isoformat() if at else None})
            return out


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)
