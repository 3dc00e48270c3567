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

from sqlalchemy import delete, insert, select, update

from recovery.site import KeyedLocks, apply_action
from shared.adapters.base import MailboxSession
from shared.errors import MailreplError, ProtocolError, ServerUnavailable
from shared.model import UidSet, utcnow
from shared.replay import ReplayEngine
from shared.site_state import SiteState
from shared.store import Store
from shared.store.models import CatalogEntry, FolderState, IdMapEntry, Mailbox, MidAlias, Replica, ReplayIntent

__all__ = ["CutoverService", "build_baseline", "read_baseline", "write_baseline", "write_baselines"]

log = logging.getLogger("mailrepl.cutover")

DEFAULT_PARALLEL = 16
WRITE_CHUNK = 200  # mailboxes per state store transaction


class CutoverService:
    def __init__(self, store: Store, replay: ReplayEngine, open_standby: Callable[[Replica], MailboxSession],
                 locks: KeyedLocks, *, parallel: int = DEFAULT_PARALLEL, on_done: Callable[[], None] = lambda: None,
                 cached_session: Callable[[Replica], MailboxSession | None] = lambda rep: None):
        self.store = store
        self.replay = replay
        self.open_standby = open_standby  # a session on the mailbox's standby copy
        # the replayer's idle session on that copy, if it has one: saves a login per mailbox
        self.cached_session = cached_session
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
        with self.store.read() as s:  # which ones have something to drain, in one query
            pending = set(s.scalars(select(Replica.id).where(Replica.id.in_(todo),
                                                             Replica.received_seq > Replica.applied_seq)))
            pending |= set(s.scalars(select(ReplayIntent.replica_id).where(ReplayIntent.replica_id.in_(todo))))
        errors: dict[int, str] = {}
        done: list[tuple[int, _Baseline]] = []
        if len(todo) == 1:
            outcomes = [self._read(reps[todo[0]], todo[0] in pending)]
        else:
            with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="cutover") as pool:
                outcomes = list(pool.map(lambda r: self._read(reps[r], r in pending), todo))
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

    def _read(self, rep: Replica, pending: bool):
        """Drain what was received, then read the standby copy: a baseline, or an error text."""
        rid = rep.id
        session = self.cached_session(rep)
        try:
            if session is not None:
                try:
                    return self._drain_and_read(rid, session, pending)
                except (ServerUnavailable, ProtocolError):  # the idle session had gone stale
                    session.close()
            session = self.open_standby(rep)
            return self._drain_and_read(rid, session, pending)
        except MailreplError as exc:
            return str(exc) or exc.__class__.__name__
        finally:
            if session is not None:
                session.close()

    def _drain_and_read(self, rid: int, session: MailboxSession, pending: bool) -> "_Baseline":
        # the replay workers leave a mailbox alone once it is cutting over: this drain is the
        # last write into the standby copy, and the baseline is read right after it
        with self.locks(rid):
            if pending:
                self.replay.replay(rid, session)
            return read_baseline(session)

    def _commit(self, chunk: list[tuple[int, "_Baseline"]], actor: str) -> None:
        with self.store.tx() as s:
            reps = {r.id: r for r in s.scalars(select(Replica).where(Replica.id.in_([rid for rid, _ in chunk])))}
            for rid, _ in chunk:
                rep = reps[rid]
                apply_action(s, rep, "drained", actor, f"replay queue drained at sequence {rep.applied_seq}")
                rep.cutover_seq = rep.applied_seq
                rep.error = None
            write_baselines(s, [(reps[rid], baseline) for rid, baseline in chunk])

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
    return write_baselines(s, [(rep, baseline)])


def write_baselines(s, items: Sequence[tuple[Replica, _Baseline]]) -> int:
    """The DR capture state of each replica: folders at their current cursors; every message the
    id map knows catalogued under an alias of the source's id. A standby message the id map does
    not know arrived after the drain (a delivery to the standby): it is left to capture as new.
    Set-based over all ``items`` (a few statements, however many mailboxes); returns how many
    messages were catalogued."""
    if not items:
        return 0
    wanted = {(rep.server, rep.address) for rep, _ in items}
    addresses = sorted({a for _, a in wanted})
    existing: dict[tuple[str, str], Mailbox] = {}
    for i in range(0, len(addresses), 500):
        for m in s.scalars(select(Mailbox).where(Mailbox.address.in_(addresses[i:i + 500]))):
            if (m.server, m.address) in wanted:
                existing[(m.server, m.address)] = m
    if existing:  # an earlier, unfinished attempt or an earlier cutover: start again
        old = [m.id for m in existing.values()]
        s.execute(delete(MidAlias).where(MidAlias.mailbox_id.in_(old)))
        s.execute(delete(FolderState).where(FolderState.mailbox_id.in_(old)))
        for m in existing.values():
            m.acked_seq = m.applied_seq = m.last_seq
            m.error = m.ship_error = None
            m.protected, m.phase, m.active_site = True, "replicating", "dr"
    fresh = [dict(server=rep.server, address=rep.address, protected=True, phase="replicating", active_site="dr")
             for rep, _ in items if (rep.server, rep.address) not in existing]
    ids = {key: m.id for key, m in existing.items()}
    if fresh:
        for mid, server, address in s.execute(
                insert(Mailbox).returning(Mailbox.id, Mailbox.server, Mailbox.address, sort_by_parameter_order=True),
                fresh):
            ids[(server, address)] = mid
    by_state: dict[str, list[int]] = {}
    for rep, _ in items:
        by_state.setdefault(rep.site_state, []).append(ids[(rep.server, rep.address)])
    for state, mids in by_state.items():
        for i in range(0, len(mids), 500):
            s.execute(update(Mailbox).where(Mailbox.id.in_(mids[i:i + 500]))
                      .values(site_state=state, last_capture_at=utcnow()))
    known: dict[int, dict] = {rep.id: {} for rep, _ in items}
    rids = list(known)
    for i in range(0, len(rids), 500):
        for rid, mid, folder, uid, sha in s.execute(
                select(IdMapEntry.replica_id, IdMapEntry.mid, IdMapEntry.folder, IdMapEntry.uid, IdMapEntry.sha256)
                .where(IdMapEntry.replica_id.in_(rids[i:i + 500]))):
            known[rid][(folder, uid)] = (mid, sha)
    folder_rows = []
    for rep, baseline in items:
        mbx, seen = ids[(rep.server, rep.address)], known[rep.id]
        for info in baseline.folders:
            delta = baseline.metas[info.name]
            unknown = [m.uid for m in delta.new if (info.name, m.uid) not in seen]
            cursor = delta.cursor.format()
            folder_rows.append(dict(mailbox_id=mbx, name=info.name, fid=info.fid, cursor=cursor,
                                    messages=info.messages, pending_cursor=cursor if unknown else None,
                                    pending_uids=UidSet(unknown).format() if unknown else None, resetting=False))
    folder_ids = {}
    if folder_rows:
        for fid, mbx, name in s.execute(
                insert(FolderState).returning(FolderState.id, FolderState.mailbox_id, FolderState.name,
                                              sort_by_parameter_order=True), folder_rows):
            folder_ids[(mbx, name)] = fid
    cats, sources = [], []
    for rep, baseline in items:
        mbx, seen = ids[(rep.server, rep.address)], known[rep.id]
        for info in baseline.folders:
            for m in baseline.metas[info.name].new:
                hit = seen.get((info.name, m.uid))
                if hit is None:
                    continue
                flags = " ".join(sorted(f for f in m.flags if f.lower() != "\\recent"))
                cats.append(dict(mailbox_id=mbx, folder_id=folder_ids[(mbx, info.name)], uid=m.uid, guid=m.guid,
                                 sha256=hit[1], size=m.size, flags=flags))
                sources.append(hit[0])
    aliases = []
    for i in range(0, len(cats), 5000):
        part = cats[i:i + 5000]
        mids = [row[0] for row in s.execute(
            insert(CatalogEntry).returning(CatalogEntry.mid, sort_by_parameter_order=True), part)]
        aliases += [dict(mailbox_id=c["mailbox_id"], dr_mid=m, source_mid=src)
                    for c, m, src in zip(part, mids, sources[i:i + 5000])]
    for i in range(0, len(aliases), 5000):
        s.execute(insert(MidAlias), aliases[i:i + 5000])
    return len(cats)
