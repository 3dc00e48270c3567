"""Capture engine: adapter changes -> sequenced outbox rows, durably.

One *cycle* brings a mailbox's outbox up to date with its server:

1. Finish pending work of earlier cycles (new messages whose bodies were not yet captured).
2. List folders; compare with what is known (by folder id where the server has one, else by
   name): created, renamed, deleted, reset (UIDVALIDITY changed or the folder was recreated).
3. Ask each changed folder for its delta since its cursor (QRESYNC: vanished, changed flags,
   new messages with metadata only).
4. Pair vanished messages with new ones carrying the same message GUID (or, without GUIDs, the
   same content hash) in another folder: a *move*, shipped without the body. In one folder, a
   vanished draft paired with a new draft is a *replace*.
5. One transaction: folder changes, moves, expunges, flag changes, and the pending work per
   folder (target cursor + UIDs still to capture). Folders with nothing pending get their
   cursor advanced in the same transaction.
6. Drain pending work in chunks: each chunk's bodies, catalog rows, outbox rows and the shrunk
   pending set commit together; the last chunk advances the cursor.

Every change gets the next sequence number of its mailbox inside the transaction that writes it
(``Mailbox.last_seq``), so the outbox is gap-free and a crash at any point resumes exactly where
the last commit left off: pending UIDs that vanished meanwhile are skipped, nothing is sent twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from mailrepl.shared.adapters.base import FolderDelta, FolderInfo, MailboxSession, MessageMeta
from mailrepl.shared.errors import CursorInvalid, FolderNotFound
from mailrepl.shared.model import Change, Cursor, Kind, UidSet, format_internaldate, utcnow
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import CatalogEntry, FolderState, Mailbox, OutboxBody, OutboxRow

__all__ = ["CaptureEngine", "CycleReport", "flags_text", "DEFAULT_CHUNK_MESSAGES", "DEFAULT_CHUNK_BYTES"]

log = logging.getLogger("mailrepl.capture")

DEFAULT_CHUNK_MESSAGES = 200
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024


def flags_text(flags: Iterable[str]) -> str:
    """Flags as the catalog keeps them: sorted, space-separated, without \\Recent."""
    return " ".join(sorted(f for f in flags if f.lower() != "\\recent"))



def _is_draft(flags: Iterable[str]) -> bool:
    return any(f.lower() == "\\draft" for f in flags)


@dataclass
class CycleReport:
    changes: int = 0
    messages: int = 0
    bytes: int = 0
    pending: int = 0  # messages still to capture after this cycle (0 = caught up)


@dataclass
class _FolderPlan:
    info: FolderInfo
    row_id: int | None = None  # known folder_state id
    since: Cursor | None = None
    reset: bool = False
    delta: FolderDelta | None = None
    moves_in: list[tuple[MessageMeta, CatalogEntry]] = field(default_factory=list)
    replaces: dict[int, int] = field(default_factory=dict)  # new uid -> old mid


class _Seq:
    """Hands out sequence numbers of one mailbox inside one transaction."""

    def __init__(self, session: Session, mailbox: Mailbox, report: CycleReport) -> None:
        self.s, self.mbx, self.report = session, mailbox, report

    def emit(self, change: Change, size: int = 0) -> int:
        self.mbx.last_seq += 1
        self.s.add(
            OutboxRow(
                mailbox_id=self.mbx.id,
                seq=self.mbx.last_seq,
                change=json.dumps(change.to_dict(), separators=(",", ":")),
                digest=change.digest(),
                sha256=change.sha256,
                size=size,
            )
        )
        self.report.changes += 1
        return self.mbx.last_seq


class CaptureEngine:
    """Runs capture cycles; holds no per-mailbox state between cycles (it is all in the store)."""

    def __init__(
        self,
        store: Store,
        *,
        chunk_messages: int = DEFAULT_CHUNK_MESSAGES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        body_lock: threading.Lock | None = None,
    ) -> None:
        self.store = store
        self.body_lock = body_lock or threading.Lock()  # held with the shipper's body GC
        self.chunk_messages = chunk_messages
        self.chunk_bytes = chunk_bytes

    # ------------------------------------------------------------------ public

    def cycle(self, mailbox_id: int, session: MailboxSession) -> CycleReport:
        report = CycleReport()
        self._drain_all(mailbox_id, session, report)
        plans, deleted = self._plan(mailbox_id, session)
        self._pair(plans, deleted, session)
        self._commit_plan(mailbox_id, plans, deleted, report)
        self._drain_all(mailbox_id, session, report)
        with self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id)
            mbx.last_capture_at = utcnow()
            if mbx.phase == "seeding" and report.pending == 0:
                mbx.phase = "replicating"
            if mbx.error:
                mbx.error = None
        return report

    # ------------------------------------------------------------------ planning

    def _plan(self, mailbox_id: int, session: MailboxSession):
        live = session.list_folders()
        with self.store.tx() as s:
            known = list(s.scalars(select(FolderState).where(FolderState.mailbox_id == mailbox_id)))
            s.expunge_all()
        use_fid = session.features.folder_id
        by_fid = {f.fid: f for f in known if f.fid} if use_fid else {}
        by_name = {f.name: f for f in known}
        matched: set[int] = set()
        plans: list[_FolderPlan] = []
        for info in live:
            row = by_fid.get(info.fid) if use_fid and info.fid else by_name.get(info.name)
            if use_fid and info.fid and row is None:
                # A new id under a known name whose id is no longer live: recreated -> reset.
                old = by_name.get(info.name)
                if old is not None and old.fid not in {i.fid for i in live}:
                    row = old
            plan = _FolderPlan(info=info)
            if row is not None:
                matched.add(row.id)
                plan.row_id = row.id
                cur = Cursor.parse(row.cursor) if row.cursor else None
                if row.fid and info.fid and row.fid != info.fid:
                    plan.reset = True
                elif cur is not None and cur.uidvalidity != info.uidvalidity:
                    plan.reset = True
                plan.since = None if plan.reset else cur
                if row.pending_uids is not None:
                    continue  # could not drain (e.g. server error); next cycle
                if not plan.reset and cur is not None and cur == info.cursor:
                    plan.delta = FolderDelta(cursor=cur)
            plans.append(plan)
        deleted = [f for f in known if f.id not in matched]
        # deltas, outside any transaction
        for plan in plans:
            if plan.delta is not None:
                continue
            try:
                plan.delta = session.changes_since(plan.info.name, plan.since)
            except CursorInvalid:
                plan.reset, plan.since = True, None
                plan.delta = session.changes_since(plan.info.name, None)
            except FolderNotFound:
                plan.delta = None  # vanished between LIST and SELECT: seen as deleted next cycle
        plans = [p for p in plans if p.delta is not None]
        return plans, deleted

    def _pair(self, plans: list[_FolderPlan], deleted: list[FolderState], session: MailboxSession) -> None:
        """Find moves (vanished here, new there, same message) and draft replaces."""
        vanished: list[CatalogEntry] = []
        with self.store.tx() as s:
            for p in plans:
                if p.row_id is None or p.reset or not p.delta.vanished:
                    continue
                uids = list(p.delta.vanished)
                for i in range(0, len(uids), 500):
                    vanished.extend(
                        s.scalars(
                            select(CatalogEntry).where(
                                CatalogEntry.folder_id == p.row_id, CatalogEntry.uid.in_(uids[i : i + 500])
                            )
                        )
                    )
            for f in deleted:
                vanished.extend(s.scalars(select(CatalogEntry).where(CatalogEntry.folder_id == f.id)))
            s.expunge_all()
        if not vanished:
            return
        candidates = [(p, m) for p in plans if not p.reset for m in p.delta.new]
        if not candidates:
            return
        use_guid = session.features.message_guid
        pool: dict[str, list[CatalogEntry]] = {}
        for entry in vanished:
            key = entry.guid if use_guid else entry.sha256
            if key:
                pool.setdefault(key, []).append(entry)
        keys: dict[tuple[int, int], str] = {}
        if use_guid:
            for p, m in candidates:
                if m.guid:
                    keys[(id(p), m.uid)] = m.guid
        else:
            # No message GUIDs: hash the new messages' bodies (read only, nothing shipped here).
            for p in {id(p): p for p, _ in candidates}.values():
                for msg in session.fetch(p.info.name, [m.uid for m in p.delta.new]):
                    keys[(id(p), msg.uid)] = hashlib.sha256(msg.body).hexdigest()
        for p, m in candidates:
            key = keys.get((id(p), m.uid))
            bucket = pool.get(key or "")
            if not bucket:
                continue
            # a move needs another folder; the same folder is an expunge + re-add
            for i, entry in enumerate(bucket):
                if entry.folder_id != p.row_id:
                    p.moves_in.append((m, bucket.pop(i)))
                    break
        # Draft replace: in one folder, a vanished draft and a new (unpaired) draft.
        moved_mids = {e.mid for p in plans for _, e in p.moves_in}
        for p in plans:
            if p.row_id is None or p.reset:
                continue
            old_drafts = [
                e for e in vanished
                if e.folder_id == p.row_id and e.mid not in moved_mids and _is_draft(e.flags.split())
            ]
            paired_uids = {m.uid for m, _ in p.moves_in}
            new_drafts = [m for m in p.delta.new if m.uid not in paired_uids and _is_draft(m.flags)]
            for old, new in zip(sorted(old_drafts, key=lambda e: e.uid), new_drafts):
                p.replaces[new.uid] = old.mid

    # ------------------------------------------------------------------ commit

    def _commit_plan(self, mailbox_id, plans, deleted, report: CycleReport) -> None:
        with self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id, with_for_update=True)
            seq = _Seq(s, mbx, report)
            rows = {f.id: f for f in s.scalars(select(FolderState).where(FolderState.mailbox_id == mailbox_id))}
            seeding = mbx.phase == "seeding"
            # 1. creates and renames, parents first
            for p in sorted(plans, key=lambda p: p.info.name.count("/")):
                row = rows.get(p.row_id) if p.row_id else None
                if row is None:
                    row = FolderState(mailbox_id=mailbox_id, name=p.info.name, fid=p.info.fid)
                    s.add(row)
                    s.flush()
                    p.row_id = row.id
                    rows[row.id] = row
                    seq.emit(Change(Kind.FOLDER_CREATE, p.info.name, special_use=tuple(p.info.special_use)))
                elif row.name != p.info.name:
                    seq.emit(Change(Kind.FOLDER_RENAME, row.name, new_folder=p.info.name))
                    row.name = p.info.name
                row.fid = p.info.fid or row.fid
                row.messages = p.info.messages
            # 2. moves (the body is not sent again)
            for p in plans:
                for meta, entry in p.moves_in:
                    src = rows.get(entry.folder_id)
                    cat = s.get(CatalogEntry, entry.mid)
                    seq.emit(
                        Change(
                            Kind.MSG_MOVE,
                            src.name if src is not None else _deleted_name(deleted, entry.folder_id),
                            mid=entry.mid,
                            new_folder=p.info.name,
                            flags=tuple(meta.flags),
                        )
                    )
                    cat.folder_id, cat.uid, cat.flags = p.row_id, meta.uid, flags_text(meta.flags)
            moved = {e.mid for p in plans for _, e in p.moves_in}
            replaced = {mid for p in plans for mid in p.replaces.values()}
            # 3. expunges and flag changes
            for p in plans:
                if p.reset or p.delta is None:
                    continue
                row = rows[p.row_id]
                if p.delta.vanished:
                    gone = list(p.delta.vanished)
                    for i in range(0, len(gone), 500):
                        for cat in s.scalars(
                            select(CatalogEntry).where(
                                CatalogEntry.folder_id == row.id, CatalogEntry.uid.in_(gone[i : i + 500])
                            )
                        ).all():
                            if cat.mid in moved or cat.mid in replaced:
                                continue
                            seq.emit(Change(Kind.MSG_EXPUNGE, row.name, mid=cat.mid))
                            s.delete(cat)
                if p.delta.changed:
                    by_uid = {m.uid: m for m in p.delta.changed}
                    uids = sorted(by_uid)
                    for i in range(0, len(uids), 500):
                        for cat in s.scalars(
                            select(CatalogEntry).where(
                                CatalogEntry.folder_id == row.id, CatalogEntry.uid.in_(uids[i : i + 500])
                            )
                        ).all():
                            text = flags_text(by_uid[cat.uid].flags)
                            if text != cat.flags:
                                seq.emit(Change(Kind.MSG_FLAGS, row.name, mid=cat.mid, flags=tuple(text.split())))
                                cat.flags = text
            # 4. resets: the standby keeps matching messages, drops the rest after re-adds
            for p in plans:
                if p.reset:
                    row = rows[p.row_id]
                    s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == row.id))
                    seq.emit(Change(Kind.FOLDER_RESET, row.name))
                    row.resetting = True
                    row.cursor = None
            s.flush()  # moved catalog rows leave their folder before it is deleted
            # 5. deletes, children first
            for f in sorted(deleted, key=lambda f: -f.name.count("/")):
                row = rows[f.id]
                seq.emit(Change(Kind.FOLDER_DELETE, row.name))
                s.delete(row)  # catalog rows of messages not moved out go with it (cascade)
            # 6. pending new messages; cursors of folders with nothing pending
            for p in plans:
                row = rows[p.row_id]
                paired = {m.uid for m, _ in p.moves_in}
                todo = [m for m in p.delta.new if m.uid not in paired]
                if todo:
                    row.pending_cursor = p.delta.cursor.format()
                    row.pending_uids = UidSet(m.uid for m in todo).format()
                    row.pending_replace = json.dumps({str(k): v for k, v in p.replaces.items()}) if p.replaces else None
                    if seeding:
                        mbx.seed_msgs_total += len(todo)
                        mbx.seed_bytes_total += sum(m.size for m in todo)
                else:
                    row.cursor = p.delta.cursor.format()
                    if row.resetting:
                        seq.emit(Change(Kind.FOLDER_RESET_DONE, row.name))
                        row.resetting = False

    # ------------------------------------------------------------------ draining

    def _drain_all(self, mailbox_id: int, session: MailboxSession, report: CycleReport) -> None:
        with self.store.tx() as s:
            pending = list(
                s.scalars(
                    select(FolderState.id).where(
                        FolderState.mailbox_id == mailbox_id, FolderState.pending_uids.is_not(None)
                    )
                )
            )
        for folder_id in pending:
            self._drain(mailbox_id, folder_id, session, report)

    def _drain(self, mailbox_id: int, folder_id: int, session: MailboxSession, report: CycleReport) -> None:
        while True:
            with self.store.tx() as s:
                row = s.get(FolderState, folder_id)
                if row is None or row.pending_uids is None:
                    return
                name, todo = row.name, UidSet.parse(row.pending_uids)
                replace = {int(k): v for k, v in json.loads(row.pending_replace or "{}").items()}
            uids = todo.first(self.chunk_messages)
            batch: list = []
            size = 0
            done_upto = 0
            for msg in session.fetch(name, uids):
                batch.append(msg)
                size += len(msg.body)
                if size >= self.chunk_bytes:
                    done_upto = msg.uid
                    break
            else:
                done_upto = uids[-1] if uids else 0
            self._commit_chunk(mailbox_id, folder_id, batch, todo.above(done_upto), replace, report)

    def _commit_chunk(self, mailbox_id, folder_id, batch, remaining: UidSet, replace, report) -> None:
        shas = [hashlib.sha256(msg.body).hexdigest() for msg in batch]  # outside the write lock
        with self.body_lock, self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id, with_for_update=True)
            row = s.get(FolderState, folder_id)
            seq = _Seq(s, mbx, report)
            # set-based: one query for the bodies already held, one insert for the new ones,
            # one flush for the catalog rows (their ids are the changes' message ids)
            have = set(s.scalars(select(OutboxBody.sha256).where(OutboxBody.sha256.in_(set(shas))))) if shas else set()
            fresh: dict[str, bytes] = {}
            for msg, sha in zip(batch, shas):
                if sha not in have:
                    fresh.setdefault(sha, msg.body)
            if fresh:
                s.execute(insert(OutboxBody), [dict(sha256=k, size=len(v), data=v) for k, v in fresh.items()])
            cats = [
                CatalogEntry(mailbox_id=mailbox_id, folder_id=folder_id, uid=msg.uid, guid=msg.guid, sha256=sha,
                             size=len(msg.body), flags=flags_text(msg.flags))
                for msg, sha in zip(batch, shas)
            ]
            s.add_all(cats)
            s.flush()
            for msg, sha, cat in zip(batch, shas, cats):
                fields = dict(
                    mid=cat.mid, sha256=sha, size=len(msg.body), flags=tuple(cat.flags.split()),
                    internaldate=format_internaldate(msg.internaldate),
                )
                old_mid = replace.pop(msg.uid, None)
                old = s.get(CatalogEntry, old_mid) if old_mid is not None else None
                if old is not None:
                    seq.emit(Change(Kind.MSG_REPLACE, row.name, old_mid=old_mid, **fields), size=len(msg.body))
                    s.delete(old)
                else:
                    seq.emit(Change(Kind.MSG_ADD, row.name, **fields), size=len(msg.body))
                report.messages += 1
                report.bytes += len(msg.body)
                mbx.captured_bytes += len(msg.body)
                if mbx.phase == "seeding":
                    mbx.seed_msgs_done += 1
                    mbx.seed_bytes_done += len(msg.body)
            if remaining:
                row.pending_uids = remaining.format()
                row.pending_replace = json.dumps({str(k): v for k, v in replace.items()}) if replace else None
                report.pending = len(remaining)
                return
            # Replaced drafts whose replacement vanished before capture: plain expunge.
            for old_mid in replace.values():
                cat = s.get(CatalogEntry, old_mid)
                if cat is not None:
                    seq.emit(Change(Kind.MSG_EXPUNGE, row.name, mid=old_mid))
                    s.delete(cat)
            row.cursor, row.pending_cursor, row.pending_uids, row.pending_replace = (
                row.pending_cursor, None, None, None,
            )
            report.pending = 0
            if row.resetting:
                seq.emit(Change(Kind.FOLDER_RESET_DONE, row.name))
                row.resetting = False


def _deleted_name(deleted: Sequence[FolderState], folder_id: int) -> str:
    for f in deleted:
        if f.id == folder_id:
            return f.name
    raise LookupError(f"folder {folder_id} unknown")
