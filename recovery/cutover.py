"""Cutover: move mailboxes' users to the standby, whether or not the primary site answers.

Per mailbox (several in parallel):

1. ``replicating -> cutting-over`` (persisted first: from here on the source is told to stop).
2. Drain the replay queue: everything received is applied to the standby (the same replay
   engine; a crash or an unreachable standby leaves the mailbox cutting-over, and asking again
   continues where it stopped).
3. Baseline of capture at DR: the standby's folders with their current cursors, and a catalog
   of its messages whose ids are aliases of the source's ids (``mid_alias``), so that the
   changes users make on the standby can later be replayed on the primary by the id the
   primary's side already knows. Nothing is captured as new: the standby's content at cutover is
   what the primary had.
4. ``cutting-over -> active-at-dr``. From then on the DR capture runs on the standby and nothing
   replays into it (fencing).

What may still sit in the source's copy queue cannot be known while the source is unreachable;
the report says what was received and when the source was last heard of.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from sqlalchemy import delete, insert, select

from recovery.site import KeyedLocks, apply_action
from shared.adapters.base import MailboxSession
from shared.errors import MailreplError, StoreError
from shared.model import utcnow
from shared.replay import ReplayEngine
from shared.site_state import SiteState
from shared.store import Store
from shared.store.models import CatalogEntry, FolderState, IdMapEntry, Mailbox, MidAlias, Replica

__all__ = ["CutoverService", "build_baseline"]

log = logging.getLogger("mailrepl.cutover")

DEFAULT_PARALLEL = 8


class CutoverService:
    def __init__(self, store: Store, replay: ReplayEngine, open_standby: Callable[[Replica], MailboxSession],
                 locks: KeyedLocks, *, parallel: int = DEFAULT_PARALLEL, on_done: Callable[[], None] = lambda: None):
        self.store = store
        self.replay = replay
        self.open_standby = open_standby  # a session on the mailbox's standby copy
        self.locks = locks
        self.parallel = parallel
        self.on_done = on_done

    def cutover(self, replica_ids: Sequence[int], *, actor: str = "admin", detail: str | None = None) -> list[dict]:
        """Cut the replicas over; one result per replica, in order. IllegalTransition (nothing
        changed) if any of them is in a state that does not allow it."""
        with self.store.tx() as s:  # all or nothing for the state check
            for rid in replica_ids:
                apply_action(s, s.get(Replica, rid), "cutover", actor, detail)
        if len(replica_ids) == 1:
            results = [self._one(replica_ids[0], actor)]
        else:
            with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="cutover") as pool:
                results = list(pool.map(lambda r: self._one(r, actor), replica_ids))
        self.on_done()
        return results

    def _one(self, rid: int, actor: str) -> dict:
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            server, address, state = rep.server, rep.address, rep.site_state
        result = dict(server=server, address=address)
        if state == SiteState.ACTIVE_AT_DR.value:
            return self._result(rid, result, "already active at DR")
        try:
            with self.locks(rid):
                session = self.open_standby(rep)
                try:
                    self.replay.replay(rid, session)
                    with self.store.read() as s:
                        rep = s.get(Replica, rid)
                        if rep.applied_seq != rep.received_seq:
                            raise StoreError(f"replay stopped at {rep.applied_seq} of {rep.received_seq}")
                    build_baseline(self.store, rid, session)
                finally:
                    session.close()
                with self.store.tx() as s:
                    rep = s.get(Replica, rid)
                    rep.cutover_seq = rep.applied_seq
                    rep.error = None
                    apply_action(s, rep, "drained", actor, f"replay queue drained at sequence {rep.applied_seq}")
                    dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
                    dr.site_state = rep.site_state
        except MailreplError as exc:
            log.warning("cutover of %s/%s not finished: %s", server, address, exc)
            with self.store.tx() as s:
                s.get(Replica, rid).error = f"cutover: {exc}"
            result.update(status="error", error=str(exc))
            return self._result(rid, result, None)
        log.info("cut over %s/%s (%s)", server, address, actor)
        return self._result(rid, result, "cut over")

    def _result(self, rid: int, result: dict, note: str | None) -> dict:
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            result.setdefault("status", "ok")
            result.update(
                state=rep.site_state, applied_seq=rep.applied_seq, received_seq=rep.received_seq,
                replay_queue=rep.received_seq - rep.applied_seq,
                source_last_seen=rep.last_received_at.isoformat() if rep.last_received_at else None,
                copy_queue_note=("changes the source captured after sequence "
                                 f"{rep.received_seq} may still sit in its copy queue; they are kept there "
                                 "and reported when failing back"),
            )
            if note:
                result["note"] = note
        return result


def build_baseline(store: Store, rid: int, session: MailboxSession) -> int:
    """Capture state at DR for replica ``rid`` from its standby copy as it is now; returns the
    number of messages catalogued. Standby messages the id map does not know are left out."""
    live = session.list_folders()
    metas = {f.name: session.changes_since(f.name, None) for f in live}
    with store.tx() as s:
        rep = s.get(Replica, rid)
        dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
        if dr is None:
            dr = Mailbox(server=rep.server, address=rep.address)
            s.add(dr)
            s.flush()
        else:  # an earlier, unfinished attempt: start again
            s.execute(delete(MidAlias).where(MidAlias.mailbox_id == dr.id))
            s.execute(delete(FolderState).where(FolderState.mailbox_id == dr.id))
        dr.protected, dr.phase, dr.active_site, dr.site_state = True, "replicating", "dr", rep.site_state
        dr.error = dr.ship_error = None
        dr.acked_seq = dr.applied_seq = dr.last_seq
        known = {(e.folder, e.uid): (e.mid, e.sha256)
                 for e in s.scalars(select(IdMapEntry).where(IdMapEntry.replica_id == rid))}
        cats: list[tuple[CatalogEntry, int]] = []
        for info in live:
            delta = metas[info.name]
            row = FolderState(mailbox_id=dr.id, name=info.name, fid=info.fid, cursor=delta.cursor.format(),
                              messages=info.messages)
            s.add(row)
            s.flush()
            for m in delta.new:
                hit = known.get((info.name, m.uid))
                if hit is None:
                    continue
                flags = " ".join(sorted(f for f in m.flags if f.lower() != "\\recent"))
                cats.append((CatalogEntry(mailbox_id=dr.id, folder_id=row.id, uid=m.uid, guid=m.guid, sha256=hit[1],
                                          size=m.size, flags=flags), hit[0]))
        s.add_all([c for c, _ in cats])
        s.flush()
        if cats:
            s.execute(insert(MidAlias), [dict(mailbox_id=dr.id, dr_mid=c.mid, source_mid=src) for c, src in cats])
        dr.last_capture_at = utcnow()
    return len(cats)
