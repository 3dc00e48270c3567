"""The standby view: the recovery gateway's capture state of each standby copy, kept current
while the mailbox replicates, so that a cutover is a state store operation.

The view is the DR capture state of the mailbox (its ``mailbox`` row, ``folder_state``,
``catalog`` and ``mid_alias`` rows), dormant while the mailbox replicates: the DR capture only
runs mailboxes that are active at DR or failing back, and a dormant row has nothing to ship.

After each replay pass the replay worker calls :meth:`StandbyView.refresh` on the same session,
under the same per-mailbox lock: one LIST (with STATUS) of the standby copy and, for each folder
whose state moved since the view last saw it, the delta since the view's cursor (QRESYNC), so
each message the replayer wrote is read once, as metadata (flags, size, GUID). Every standby
message the id map knows is catalogued (its DR id is aliased to the source's id when the cutover
switches the view on: the id map may change without the standby changing, when a reset folder's
messages are claimed again); one it does not know (never the case while only the replayer
writes) is left pending, so the DR capture reports it as new.

The cursors are the standby's own state after the replayer's last write: once users are let in,
the first DR capture cycle sees exactly what they changed. ``Replica.view_seq`` records the
applied sequence number the view matches; a cutover reads the standby only if it differs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select

from mailrepl.shared.adapters.base import FolderDelta, FolderInfo, MailboxSession
from mailrepl.shared.engines.capture import flags_text
from mailrepl.shared.errors import CursorInvalid, FolderNotFound
from mailrepl.shared.model import Cursor, UidSet
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import CatalogEntry, FolderState, IdMapEntry, Mailbox, Replica

__all__ = ["StandbyView", "is_fresh"]

log = logging.getLogger("mailrepl.standby_view")


def is_fresh(rep: Replica) -> bool:
    """The view matches everything applied to the standby copy."""
    return rep.view_seq is not None and rep.view_seq == rep.applied_seq


@dataclass
class _Known:  # a folder_state row as read before talking to the server
    id: int
    name: str
    fid: str
    cursor: str | None


@dataclass
class _Plan:
    info: FolderInfo
    row_id: int | None
    since: Cursor | None = None  # the view's cursor of the folder (None: read it all)
    reset: bool = False
    delta: FolderDelta | None = None  # None: unchanged since the view's cursor


class StandbyView:
    def __init__(self, store: Store) -> None:
        self.store = store

    def refresh(self, rid: int, session: MailboxSession) -> int:
        """Bring the view of replica ``rid`` up to date with its standby copy as it is now (the
        caller holds the mailbox's lock: nothing writes the copy meanwhile). Returns how many
        folders had to be read."""
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            server, address, applied = rep.server, rep.address, rep.applied_seq
            mbx_id = s.scalar(select(Mailbox.id).where(Mailbox.server == server, Mailbox.address == address))
            known = [_Known(f.id, f.name, f.fid, f.cursor) for f in s.scalars(
                select(FolderState).where(FolderState.mailbox_id == mbx_id))] if mbx_id else []
        live = session.list_folders()
        plans, deleted = _match(known, live, session.features.folder_id)
        complete, read = True, 0
        for p in plans:
            if p.since is not None and p.since == p.info.cursor:
                continue
            read += 1
            try:
                p.delta = session.changes_since(p.info.name, p.since)
            except CursorInvalid:
                p.reset = True
                p.delta = session.changes_since(p.info.name, None)
            except FolderNotFound:  # vanished between LIST and EXAMINE: read again next time
                complete = False
        with self.store.tx() as s:
            mbx = _mailbox(s, server, address)
            _write(s, rid, mbx, plans, deleted)
            if complete:
                s.get(Replica, rid).view_seq = applied
        return read


def _match(known: list[_Known], live: list[FolderInfo], use_fid: bool) -> tuple[list[_Plan], list[_Known]]:
    """Pair live folders with the view's rows: by folder id where the server has one, else by
    name; a folder whose UIDVALIDITY or id changed is read again in full."""
    by_fid = {k.fid: k for k in known if k.fid} if use_fid else {}
    by_name = {k.name: k for k in known}
    live_fids = {i.fid for i in live}
    plans, matched = [], set()
    for info in live:
        row = by_fid.get(info.fid) if use_fid and info.fid else by_name.get(info.name)
        if row is None and use_fid and info.fid:
            old = by_name.get(info.name)
            if old is not None and old.fid not in live_fids:
                row = old  # recreated under the same name
        if row is not None and row.id in matched:
            row = None
        plan = _Plan(info, row.id if row else None)
        if row is not None:
            matched.add(row.id)
            cur = Cursor.parse(row.cursor) if row.cursor else None
            plan.reset = (cur is None or cur.uidvalidity != info.uidvalidity
                          or bool(row.fid and info.fid and row.fid != info.fid))
            plan.since = None if plan.reset else cur
        plans.append(plan)
    return plans, [k for k in known if k.id not in matched]


def _mailbox(s, server: str, address: str) -> Mailbox:
    mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
    if mbx is None:  # dormant until a cutover switches it on
        mbx = Mailbox(server=server, address=address, protected=False, phase="idle", active_site="primary",
                      site_state="replicating")
        s.add(mbx)
        s.flush()
    return mbx


def _drop(s, folder_id: int, uids=None) -> None:
    """Catalog rows of a folder: all, or those at ``uids``."""
    if uids is None:
        s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == folder_id))
        return
    for i in range(0, len(uids), 500):
        s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == folder_id, CatalogEntry.uid.in_(uids[i:i + 500])))


def _write(s, rid: int, mbx: Mailbox, plans: list[_Plan], deleted: list[_Known]) -> None:
    for k in deleted:
        _drop(s, k.id)
        s.execute(delete(FolderState).where(FolderState.id == k.id))
    rows = {f.id: f for f in s.scalars(select(FolderState).where(FolderState.mailbox_id == mbx.id))}
    # renames first free their old names (a folder may take a name another one just gave up)
    for p in plans:
        if p.row_id is not None and rows[p.row_id].name != p.info.name:
            rows[p.row_id].name = f"\x00{p.row_id}"
    s.flush()
    wanted = sorted({p.info.name for p in plans if p.delta is not None and p.delta.new})
    ids: dict[tuple[str, int], str] = {}
    for name in wanted:
        for uid, sha in s.execute(select(IdMapEntry.uid, IdMapEntry.sha256).where(
                IdMapEntry.replica_id == rid, IdMapEntry.folder == name)):
            ids[(name, uid)] = sha
    for p in plans:
        row = rows.get(p.row_id) if p.row_id is not None else None
        if row is None:
            row = FolderState(mailbox_id=mbx.id, name=p.info.name, fid=p.info.fid, resetting=False)
            s.add(row)
            s.flush()
            rows[row.id] = row
        row.name, row.fid, row.messages = p.info.name, p.info.fid or row.fid, p.info.messages
        d = p.delta
        if d is None:
            continue
        pending = set() if p.reset or not row.pending_uids else set(UidSet.parse(row.pending_uids))
        if p.reset:
            _drop(s, row.id)
        if d.vanished:
            _drop(s, row.id, list(d.vanished))
            pending -= set(d.vanished)
        if d.changed:
            by_uid = {m.uid: m for m in d.changed}
            uids = sorted(by_uid)
            for i in range(0, len(uids), 500):
                for cat in s.scalars(select(CatalogEntry).where(CatalogEntry.folder_id == row.id,
                                                                CatalogEntry.uid.in_(uids[i:i + 500]))):
                    cat.flags = flags_text(by_uid[cat.uid].flags)
        for m in d.new:
            sha = ids.get((p.info.name, m.uid))
            if sha is None:
                pending.add(m.uid)
                continue
            cat = CatalogEntry(mailbox_id=mbx.id, folder_id=row.id, uid=m.uid, guid=m.guid, sha256=sha,
                               size=m.size, flags=flags_text(m.flags))
            s.add(cat)
        row.cursor = d.cursor.format()
        row.pending_cursor = row.cursor if pending else None
        row.pending_uids = UidSet(pending).format() if pending else None
        if pending:
            log.info("%s: %d message(s) in %r on the standby that replay did not write; captured as new "
                     "after a cutover", mbx.address, len(pending), p.info.name)
