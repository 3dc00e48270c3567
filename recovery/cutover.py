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

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from sqlalchemy import select, update

from mailrepl.recovery.site import KeyedLocks, apply_action
from mailrepl.recovery.standby_view import StandbyView, is_fresh
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
WRITE_CHUNK = 500  # mailboxes per state store transaction


class CutoverService:
    def __init__(self, store: Store, replay: ReplayEngine, open_standby: Callable[[Replica], MailboxSession],
                 locks: KeyedLocks, *, parallel: int = DEFAULT_PARALLEL, on_done: Callable[[], None] = lambda: None,
                 cached_session: Callable[[Replica], MailboxSession | None] = lambda rep: None,
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
        (several in parallel); the state store is written in a few large transactions."""
        with self.store.tx() as s:  # all or nothing for the state check
            reps = {r.id: r for r in s.scalars(select(Replica).where(Replica.id.in_(list(replica_ids))))}
            for rid in replica_ids:
                apply_action(s, reps[rid], "cutover", actor, detail)
            todo = [rid for rid in replica_ids if reps[rid].site_state == SiteState.CUTTING_OVER.value]
            info = {rid: (reps[rid].server, reps[rid].address) for rid in replica_ids}
            stale = {rid for rid in todo if not is_fresh(reps[rid]) or reps[rid].received_seq > reps[rid].applied_seq}
        with self.store.read() as s:  # a write in flight before a crash needs the replay's recovery
            stale |= set(s.scalars(select(ReplayIntent.replica_id).where(ReplayIntent.replica_id.in_(todo))))
            views = _views(s, [info[r] for r in todo])
            stale |= {rid for rid in todo if info[rid] not in views}
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
                    s.get(Replica, rid).error = f"cutover: {error}"
        for rid in errors:
            log.warning("cutover of %s/%s not finished: %s", *info[rid], errors[rid])
        if done:
            log.info("cut over %d mailbox(es) (%s, %d read on the standby)", len(done), actor, len(visit) - len(errors))
        self.on_done()
        return self._results(replica_ids, errors, set(todo), set(visit))

    def _catch_up(self, rep: Replica) -> str | None:
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
        with self.store.tx() as s:
            reps = list(s.scalars(select(Replica).where(Replica.id.in_(chunk))))
            for rep in reps:
                apply_action(s, rep, "drained", actor, f"replay queue drained at sequence {rep.applied_seq}")
                rep.cutover_seq = rep.applied_seq
                rep.error = None
            switch_on(s, reps)

    def _results(self, replica_ids: Sequence[int], errors: dict[int, str], moved: set[int],
                 read: set[int]) -> list[dict]:
        out = []
        with self.store.read() as s:
            for rid in replica_ids:
                rep = s.get(Replica, rid)
                r = dict(server=rep.server, address=rep.address, state=rep.site_state,
                         status="error" if rid in errors else "ok", applied_seq=rep.applied_seq,
                         received_seq=rep.received_seq, replay_queue=rep.received_seq - rep.applied_seq,
                         source_last_seen=rep.last_received_at.isoformat() if rep.last_received_at else None,
                         copy_queue_note=("changes the source captured after sequence "
                                          f"{rep.received_seq} may still sit in its copy queue; they are kept "
                                          "there and reported when failing back"))
                r["standby_read"] = rid in read  # drained or view caught up on the standby
                if rid in errors:
                    r["error"] = errors[rid]
                r["note"] = "cut over" if rid in moved and rid not in errors else (
                    "already active at DR" if rep.site_state == SiteState.ACTIVE_AT_DR.value else None)
                out.append(r)
        return out


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
