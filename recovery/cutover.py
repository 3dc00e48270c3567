"""Cutover: move mailboxes' users to the standby, whether or not the primary site answers.

Per mailbox (several in parallel):

1. ``replicating -> cutting-over`` (persisted first: from here on the source is told to stop).
2. Drain the replay queue: everything received is applied to the standby (the same replay
   engine; a crash or an unreachable standby leaves the mailbox cutting-over, and asking again
   continues where it stopped).
3. The capture state at DR is the *standby view* (``mailrepl.recovery.standby_view``), which the replay
   workers keep current as they write: folders at the standby's own cursors, every message
   catalogued under an alias of the source's id, so that the changes users make on the standby
   can later be replayed on the primary by the id the primary's side knows. The standby is read
   only where the view is behind what was applied (after a drain, or a view not built yet):
   with the view current, a cutover is a state store operation and needs no standby at all.
4. ``cutting-over -> active-at-dr``. From then on the DR capture runs on the standby and nothing
   replays into it (fencing).

What may still sit in the source's copy queue cannot be known while the source is unreachable;
the report says what was received and when the source was last heard of.
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Callable, Sequence

from sqlalchemy import select, update

from mailrepl.recovery.site import KeyedLocks, NoSuchMailbox, apply_action_all
from mailrepl.recovery.standby_view import StandbyView
from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.capture_state import alias_catalogued
from mailrepl.shared.errors import MailreplError, ProtocolError, ServerUnavailable
from mailrepl.shared.model import utcnow
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import Mailbox, Replica, ReplayIntent

__all__ = ["CutoverService", "switch_on"]

log = logging.getLogger("mailrepl.cutover")

DEFAULT_PARALLEL = 16
WRITE_CHUNK = 2000  # mailboxes per state store transaction (each a few set-based statements per 500)


class CutoverService:
    def __init__(self, store: Store, replay: ReplayEngine, open_standby: Callable[[_Rep], MailboxSession],
                 locks: KeyedLocks, *, parallel: int = DEFAULT_PARALLEL, on_done: Callable[[], None] = lambda: None,
                 cached_session: Callable[[_Rep], MailboxSession | None] = lambda rep: None,
                 view: StandbyView | None = None):
        self.store = store
        self.replay = replay
        self.view = view or StandbyView(store)
        self.open_standby = open_standby  # a session on the mailbox's standby copy
        # the replayer's idle session on that copy, if it has one: saves a login per mailbox
        self.cached_session = cached_session
        self.locks = locks
        self.parallel = parallel
        self.on_done = on_done

    def cutover(self, replica_ids: Sequence[int], *, actor: str = "admin", detail: str | None = None) -> list[dict]:
        """Cut the replicas over; one result per replica, in order. IllegalTransition (nothing
        changed) if any of them is in a state that does not allow it.

        Only mailboxes with something to drain, or whose standby view is behind, touch the standby
        (several in parallel, each through the server's bounded connection pool); the state store
        is read and written set-based, in a few statements per chunk of mailboxes however many
        are cut over; a mailbox whose drain fails is reported and stays cutting over (asking
        again continues it), the others proceed."""
        ids = list(dict.fromkeys(replica_ids))
        with self.store.tx() as s:  # all or nothing for the state check
            reps = _replicas(s, ids)
            moves = apply_action_all(s, [(rid, reps[rid].site_state) for rid in ids], "cutover", actor, detail)
            todo = [rid for rid in ids if moves[rid].after == SiteState.CUTTING_OVER]
            stale = {rid for rid in todo if not _fresh(reps[rid]) or reps[rid].received_seq > reps[rid].applied_seq}
        with self.store.read() as s:  # a write in flight before a crash needs the replay's recovery
            for part in chunks(todo):
                stale |= set(s.scalars(select(ReplayIntent.replica_id).where(ReplayIntent.replica_id.in_(part))))
            views = _views(s, [(reps[r].server, reps[r].address) for r in todo])
            stale |= {rid for rid in todo if (reps[rid].server, reps[rid].address) not in views}
        errors: dict[int, str] = {}
        visit = [rid for rid in todo if rid in stale]
        if len(visit) == 1:
            outcomes = [self._catch_up(reps[visit[0]])]
        elif visit:
            with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="cutover") as pool:
                outcomes = list(pool.map(lambda r: self._catch_up(reps[r]), visit))
        else:
            outcomes = []
        for rid, outcome in zip(visit, outcomes):
            if outcome is not None:
                errors[rid] = outcome
        done = [rid for rid in todo if rid not in errors]
        for part in chunks(done, WRITE_CHUNK):
            self._commit(part, actor)
        if errors:
            with self.store.tx() as s:
                for rid, error in errors.items():
                    s.execute(update(Replica).where(Replica.id == rid).values(error=f"cutover: {error}"))
        for rid in errors:
            log.warning("cutover of %s/%s not finished: %s", reps[rid].server, reps[rid].address, errors[rid])
        if done:
            log.info("cut over %d mailbox(es) (%s, %d read on the standby)", len(done), actor, len(visit) - len(errors))
        self.on_done()
        return self._results(replica_ids, errors, set(todo), set(visit))

    def _catch_up(self, rep: _Rep) -> str | None:
        """Drain what was received and bring the standby view up to date: None, or an error text."""
        session = self.cached_session(rep)
        try:
            if session is not None:
                try:
                    self._drain_and_view(rep.id, session)
                    return None
                except (ServerUnavailable, ProtocolError):  # the idle session had gone stale
                    session.close()
            session = self.open_standby(rep)
            self._drain_and_view(rep.id, session)
            return None
        except MailreplError as exc:
            return str(exc) or exc.__class__.__name__
        finally:
            if session is not None:
                session.close()

    def _drain_and_view(self, rid: int, session: MailboxSession) -> None:
        # the replay workers leave a mailbox alone once it is cutting over: this drain is the
        # last write into the standby copy, and the view is brought up to date right after it
        with self.locks(rid):
            self.replay.replay(rid, session)
            self.view.refresh(rid, session)

    def _commit(self, chunk: list[int], actor: str) -> None:
        """Drained: active at DR, the standby views switched on (one transaction per chunk)."""
        with self.store.tx() as s:
            reps = _replicas(s, chunk)
            moves = apply_action_all(s, [(rid, reps[rid].site_state) for rid in chunk], "drained", actor,
                                     lambda rid: f"replay queue drained at sequence {reps[rid].applied_seq}")
            for part in chunks(chunk):
                s.execute(update(Replica).where(Replica.id.in_(part))
                          .values(cutover_seq=Replica.applied_seq, error=None)
                          .execution_options(synchronize_session=False))
            switch_on(s, [dataclasses.replace(reps[rid], site_state=moves[rid].after.value) for rid in chunk])

    def _results(self, replica_ids: Sequence[int], errors: dict[int, str], moved: set[int],
                 read: set[int]) -> list[dict]:
        with self.store.read() as s:
            reps = _replicas(s, list(dict.fromkeys(replica_ids)))
        out = []
        for rid in replica_ids:
            rep = reps[rid]
            r = {"server": rep.server, "address": rep.address, "state": rep.site_state,
                 "status": "error" if rid in errors else "ok", "applied_seq": rep.applied_seq,
                 "received_seq": rep.received_seq, "replay_queue": rep.received_seq - rep.applied_seq,
                 "source_last_seen": rep.last_received_at.isoformat() if rep.last_received_at else None,
                 "copy_queue_note": ("changes the source captured after sequence "
                                     f"{rep.received_seq} may still sit in its copy queue; they are kept "
                                     "there and reported when failing back"),
                 "standby_read": rid in read}  # drained or view caught up on the standby
            if rid in errors:
                r["error"] = errors[rid]
            r["note"] = "cut over" if rid in moved and rid not in errors else (
                "already active at DR" if rep.site_state == SiteState.ACTIVE_AT_DR.value else None)
            out.append(r)
        return out


@dataclasses.dataclass(frozen=True)
class _Rep:
    """What a cutover reads of a replica (a plain row: 10,000 of them are cheap)."""

    id: int
    server: str
    address: str
    target: str
    site_state: str
    received_seq: int
    applied_seq: int
    view_seq: int | None
    last_received_at: datetime | None


def _replicas(s, ids: Sequence[int]) -> dict[int, _Rep]:
    """The replicas ``ids`` by id, a chunk of them per query; NoSuchMailbox names one that is gone."""
    r = Replica
    cols = (r.id, r.server, r.address, r.target, r.site_state, r.received_seq, r.applied_seq, r.view_seq,
            r.last_received_at)
    out: dict[int, _Rep] = {}
    for part in chunks(ids):
        out.update((row[0], _Rep(*row)) for row in s.execute(select(*cols).where(r.id.in_(part))))
    missing = [rid for rid in ids if rid not in out]
    if missing:
        raise NoSuchMailbox(f"no replicated mailbox with id {missing[0]}")
    return out


def _fresh(rep: _Rep) -> bool:
    """``standby_view.is_fresh`` of a plain row."""
    return rep.view_seq is not None and rep.view_seq == rep.applied_seq


def _views(s, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The mailbox rows (standby views) of the (server, address) pairs that have one."""
    out: dict[tuple[str, str], int] = {}
    wanted = set(keys)
    addresses = sorted({a for _, a in wanted})
    for part in chunks(addresses):
        for mid, server, address in s.execute(select(Mailbox.id, Mailbox.server, Mailbox.address)
                                              .where(Mailbox.address.in_(part))):
            if (server, address) in wanted:
                out[(server, address)] = mid
    return out


def switch_on(s, items: Sequence[Replica]) -> int:
    """Turn the standby views of ``items`` into the DR capture state (set-based: a few
    statements however many mailboxes); returns how many mailboxes were switched on."""
    ids = _views(s, [(rep.server, rep.address) for rep in items])
    by_state: dict[str, list[int]] = {}
    for rep in items:
        mid = ids.get((rep.server, rep.address))
        if mid is None:
            raise MailreplError(f"{rep.address}: no view of the standby copy to switch on")
        by_state.setdefault(rep.site_state, []).append(mid)
    alias_catalogued(s, [(ids[(rep.server, rep.address)], rep.id) for rep in items])
    for state, mids in by_state.items():
        for part in chunks(mids):
            s.execute(update(Mailbox).where(Mailbox.id.in_(part)).values(
                site_state=state, protected=True, phase="replicating", active_site="dr", last_capture_at=utcnow(),
                acked_seq=Mailbox.last_seq, applied_seq=Mailbox.last_seq, error=None, ship_error=None))
    return len(ids)
