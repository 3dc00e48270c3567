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
from dataclasses import dataclass
from typing import Callable, Sequence

from sqlalchemy import delete, insert, select

from recovery.site import KeyedLocks, apply_action
from shared.adapters.base import MailboxSession
from shared.errors import MailreplError
from shared.model import UidSet, utcnow
from shared.replay import ReplayEngine
from shared.site_state import SiteState
from shared.store import Store
from shared.store.models import CatalogEntry, FolderState, IdMapEntry, Mailbox, MidAlias, Replica, ReplayIntent

__all__ = ["CutoverService", "build_baseline", "read_baseline", "write_baseline"]

log = logging.getLogger("mailrepl.cutover")

DEFAULT_PARALLEL = 16
WRITE_CHUNK = 200  # mailboxes per state store transaction


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
        changed) if any of them is in a state that does not allow it.

        The standby is read for many mailboxes in parallel; the state store is written in a few
        large transactions (a commit per mailbox would make cutting over a whole server slow)."""
        with self.store.tx() as s:  # all or nothing for the state check
            reps = {r.id: r for r in s.scalars(select(Replica).where(Replica.id.in_(list(replica_ids))))}
            for rid in replica_ids:
                apply_action(s, reps[rid], "cutover", actor, detail)
            todo = [rid for rid in replica_ids if reps[rid].site_state == SiteState.CUTTING_OVER.value]
            info = {rid: (reps[rid].server, reps[rid].address) for rid in replica_ids}
        errors: dict[int, str] = {}
        done: list[tuple[int, _Baseline]] = []
        if len(todo) == 1:
            outcomes = [self._read(todo[0], actor)]
        else:
            with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="cutover") as pool:
                outcomes = list(pool.map(lambda r: self._read(r, actor), todo))
        for rid, outcome in zip(todo, outcomes):
            if isinstance(outcome, str):
                errors[rid] = outcome
            else:
                done.append((rid, outcome))
        for i in range(0, len(done), WRITE_CHUNK):
            self._commit(done[i:i + WRITE_CHUNK], actor)
        if errors:
            with self.store.tx() as s:
                for rid, error in errors.items():
                    s.get(Replica, rid).error = f"cutover: {error}"
        for rid in errors:
            log.warning("cutover of %s/%s not finished: %s", *info[rid], errors[rid])
        if done:
            log.info("cut over %d mailbox(es) (%s)", len(done), actor)
        self.on_done()
        return self._results(replica_ids, errors, set(todo))

    def _read(self, rid: int, actor: str):
        """Drain what was received, then read the standby copy: a baseline, or an error text."""
        try:
            with self.store.read() as s:
                rep = s.get(Replica, rid)
                pending = rep.received_seq > rep.applied_seq or s.get(ReplayIntent, rid) is not None
            session = self.open_standby(rep)
            try:
                # the replay workers leave a mailbox alone once it is cutting over: this drain is
                # the last write into the standby copy, and the baseline is read right after it
                with self.locks(rid):
                    if pending:
                        self.replay.replay(rid, session)
                    return read_baseline(session)
            finally:
                session.close()
        except MailreplError as exc:
            return str(exc) or exc.__class__.__name__

    def _commit(self, chunk: list[tuple[int, "_Baseline"]], actor: str) -> None:
        with self.store.tx() as s:
            for rid, baseline in chunk:
                rep = s.get(Replica, rid)
                write_baseline(s, rep, baseline)
                rep.cutover_seq = rep.applied_seq
                rep.error = None
                apply_action(s, rep, "drained", actor, f"replay queue drained at sequence {rep.applied_seq}")
                s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address)
                         ).site_state = rep.site_state

    def _results(self, replica_ids: Sequence[int], errors: dict[int, str], moved: set[int]) -> list[dict]:
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
                if rid in errors:
                    r["error"] = errors[rid]
                r["note"] = "cut over" if rid in moved and rid not in errors else (
                    "already active at DR" if rep.site_state == SiteState.ACTIVE_AT_DR.value else None)
                out.append(r)
        return out


@dataclass
class _Baseline:
    folders: list  # FolderInfo
    metas: dict  # folder name -> FolderDelta (every message, no bodies)


def read_baseline(session: MailboxSession) -> _Baseline:
    live = session.list_folders()
    return _Baseline(live, {f.name: session.changes_since(f.name, None) for f in live})


def build_baseline(store: Store, rid: int, session: MailboxSession) -> int:
    """Capture state at DR for replica ``rid`` from its standby copy as it is now."""
    baseline = read_baseline(session)
    with store.tx() as s:
        return write_baseline(s, s.get(Replica, rid), baseline)


def write_baseline(s, rep: Replica, baseline: _Baseline) -> int:
    """The DR capture state of ``rep``: folders at their current cursors; every message the id map
    knows catalogued under an alias of the source's id. A standby message the id map does not
    know arrived after the drain (a delivery to the standby): it is left to capture as new."""
    dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
    if dr is None:
        dr = Mailbox(server=rep.server, address=rep.address)
        s.add(dr)
        s.flush()
    else:  # an earlier, unfinished attempt or an earlier cutover: start again
        s.execute(delete(MidAlias).where(MidAlias.mailbox_id == dr.id))
        s.execute(delete(FolderState).where(FolderState.mailbox_id == dr.id))
    dr.protected, dr.phase, dr.active_site, dr.site_state = True, "replicating", "dr", rep.site_state
    dr.error = dr.ship_error = None
    dr.acked_seq = dr.applied_seq = dr.last_seq
    known = {(folder, uid): (mid, sha) for mid, folder, uid, sha in s.execute(
        select(IdMapEntry.mid, IdMapEntry.folder, IdMapEntry.uid, IdMapEntry.sha256).where(IdMapEntry.replica_id == rep.id))}
    # set-based: one insert for the folders, one for the catalog, one for the aliases
    folder_rows = []
    for info in baseline.folders:
        delta = baseline.metas[info.name]
        unknown = [m.uid for m in delta.new if (info.name, m.uid) not in known]
        cursor = delta.cursor.format()
        folder_rows.append(dict(mailbox_id=dr.id, name=info.name, fid=info.fid, cursor=cursor, messages=info.messages,
                                pending_cursor=cursor if unknown else None,
                                pending_uids=UidSet(unknown).format() if unknown else None, resetting=False))
    ids = {}
    if folder_rows:
        for fid, name in s.execute(insert(FolderState).returning(FolderState.id, FolderState.name,
                                                                  sort_by_parameter_order=True), folder_rows):
            ids[name] = fid
    cats, sources = [], []
    for info in baseline.folders:
        for m in baseline.metas[info.name].new:
            hit = known.get((info.name, m.uid))
            if hit is None:
                continue
            cats.append(dict(mailbox_id=dr.id, folder_id=ids[info.name], uid=m.uid, guid=m.guid, sha256=hit[1],
                             size=m.size, flags=" ".join(sorted(f for f in m.flags if f.lower() != "\\recent"))))
            sources.append(hit[0])
    if cats:
        mids = [row[0] for row in s.execute(insert(CatalogEntry).returning(CatalogEntry.mid, sort_by_parameter_order=True),
                                            cats)]
        s.execute(insert(MidAlias), [dict(mailbox_id=dr.id, dr_mid=m, source_mid=src) for m, src in zip(mids, sources)])
    dr.last_capture_at = utcnow()
    return len(cats)
