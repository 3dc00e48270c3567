"""Replay engine: received changes -> writes on this side's server, in order, exactly once.

Two parts:

- :func:`plan` (pure, ``replay_plan``): cuts the next contiguous run of changes into groups
  the server can take in one command (consecutive adds to one folder -> one MULTIAPPEND;
  consecutive expunges, flag sets or moves of one folder -> one UID command). Order is never
  changed.
- :class:`ReplayEngine`: applies groups through an adapter session and records the result
  (id map, applied sequence number) in one transaction per group.

Exactly once across crashes: a group that creates messages (add, replace, move) first commits a
``replay_intent`` (folder, UIDVALIDITY, UIDNEXT before the write), durably. If the process dies after the
server stored the messages but before the id map was recorded, the next run finds the intent,
reads the messages at UID >= that UIDNEXT, matches them by SHA-256 to the intended changes and
records them instead of writing again (``replay_recover``). An add whose mid is already mapped
is a no-op; expunge, flag and folder operations are idempotent on the server.

So the transaction that records a group's result (id map, applied sequence number, intent
removed) need not be flushed to disk on its own (``Store.tx(durable=False)``): the next durable
commit (the next intent, a received batch) flushes it, and if a power failure loses it, the
group is done again from the state before it — from the still recorded intent where it wrote
messages, idempotently where it did not. One replayed group costs one flush (its intent), or none.

With ``keep_unknown`` a folder delete keeps what the id map does not know (``mailrepl.shared.engines.replay_keep``):
failback replays the standby's deletes on a primary that may hold mail the standby never had.

A ``gate`` (``Gate``) decides which received changes are eligible now: how many of the next run
may be played (a lagged copy plays only changes older than its delay), and which of them are set
aside instead of played (a mass-delete guard holding deletions). A change set aside keeps its row
(state ``held``) and the applied sequence number moves past it in the same transaction; playing
or dropping it later is the gate owner's business. Without a gate every received change is played.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from sqlalchemy import bindparam, delete, insert, select, update

from mailrepl.shared.adapters.base import AppendItem, FolderInfo, MailboxSession
from mailrepl.shared.capture_state import IdMap, MapEntry, ReplicaFolders
from mailrepl.shared.content.bodies import BodyCorrupt, BodyStore
from mailrepl.shared.errors import FolderNotFound, MessageRejected, StoreError
from mailrepl.shared.model import Change, Kind, parse_internaldate, utcnow
from mailrepl.shared.engines.replay_check import Alteration, check_written
from mailrepl.shared.engines.replay_journal import PassJournal
from mailrepl.shared.engines.replay_claims import Dates, proven, same_copy
from mailrepl.shared.engines.replay_keep import plan_delete
from mailrepl.shared.engines.replay_plan import DEFAULT_APPEND_BATCH, DEFAULT_APPEND_BYTES, Group, by_folder, plan, runs
from mailrepl.shared.engines.replay_recover import reconcile
from mailrepl.shared.content.standby_copy import identity
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import (
    AlteredMessage,
    InboxRow,
    Orphan,
    RejectedMessage,
    Replica,
    ReplayIntent,
)

__all__ = ["Group", "plan", "ReplayEngine", "ReplayReport", "DEFAULT_APPEND_BATCH", "DEFAULT_APPEND_BYTES", "Gate"]

log = logging.getLogger("mailrepl.replay")

_INBOX = InboxRow.__table__  # Core: rows are read as tuples
_REPLICA = Replica.__table__
_INTENT = ReplayIntent.__table__
# built once: written at every group a pass applies
_ADVANCE = (update(_REPLICA).where(_REPLICA.c.id == bindparam("rid"), _REPLICA.c.applied_seq == bindparam("before"))
            .values(applied_seq=bindparam("last"), last_applied_at=bindparam("at")))
_MARK_APPLIED = (update(_INBOX).where(_INBOX.c.replica_id == bindparam("rid"), _INBOX.c.seq >= bindparam("first"),
                                      _INBOX.c.seq <= bindparam("last"), _INBOX.c.state == "received")
                 .values(state="applied"))
_DROP_INTENT = delete(_INTENT).where(_INTENT.c.replica_id == bindparam("rid"))
_ORPHAN = Orphan.__table__
_ORPHANS_IN = select(_ORPHAN).where(_ORPHAN.c.replica_id == bindparam("rid"), _ORPHAN.c.folder == bindparam("folder"))
_INTENT_ROW = select(_INTENT).where(_INTENT.c.replica_id == bindparam("rid"))
_APPLIED_SEQ = select(_REPLICA.c.applied_seq).where(_REPLICA.c.id == bindparam("rid"))
_NEXT_CHANGES = (select(_INBOX.c.seq, _INBOX.c.change)
                 .where(_INBOX.c.replica_id == bindparam("rid"), _INBOX.c.seq >= bindparam("start"))
                 .order_by(_INBOX.c.seq).limit(bindparam("limit")))

_WRITES_INTO = (Kind.MSG_ADD, Kind.MSG_REPLACE, Kind.MSG_MOVE, Kind.FOLDER_RESET)  # a folder the copy has
# (replica id, the next contiguous changes) -> (how many of them may be played now, the sequence
# numbers among those to set aside instead)
Gate = Callable[[int, Sequence[tuple[int, Change]]], tuple[int, frozenset[int]]]


@dataclass
class ReplayReport:
    applied: int = 0
    appended: int = 0
    rejected: int = 0
    altered: int = 0  # written, but stored with other bytes by the standby
    recovered: int = 0  # messages found on the server after a crash instead of written again
    last_reset_seq: int = 0  # the last folder reset applied in this pass (0: none)
    held: int = 0  # changes set aside by the gate
    kept_folders: list[dict] = field(default_factory=list)  # deleted there, kept here (keep_unknown)
    applied_seq: int | None = None  # the replica's applied sequence number as the pass left it
    journal: PassJournal = field(default_factory=PassJournal)  # what the pass wrote (the standby view's input)


class ReplayEngine:
    def __init__(
        self,
        store: Store,
        bodies: BodyStore,
        *,
        append_batch: int = DEFAULT_APPEND_BATCH,
        append_bytes: int = DEFAULT_APPEND_BYTES,
        window: int = 1000,
        keep_unknown: bool = False,
        gate: Gate | None = None,
    ) -> None:
        self.store = store
        self.bodies = bodies  # received bodies: skeletons + parts, checked on every read
        self.append_batch = append_batch
        self.append_bytes = append_bytes
        self.window = window
        self.keep_unknown = keep_unknown  # folder deletes keep messages and subfolders the id map does not know
        self.gate = gate  # which received changes are eligible now (see the module docstring)
        # replica id -> folders this pass found in, or wrote to, the replica's folder record
        # (forgotten at the start of each pass: the record may be rewritten between passes)
        self._recorded: dict[int, set[str]] = {}
        # called with the replica id after each group's changes are applied and committed
        self.on_applied: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ driver

    def replay(self, replica_id: int, session: MailboxSession, report: ReplayReport | None = None,
               listing: Sequence[FolderInfo] = ()) -> ReplayReport:
        """Apply every received change that continues the applied sequence; stop at a gap.
        ``report`` (filled in place) tells what was done even if a later change fails.
        ``listing``: the copy's folders as listed just before, under the mailbox's lock (a
        folder's UIDVALIDITY and UIDNEXT before the pass's first write into it, not asked again)."""
        report = ReplayReport() if report is None else report
        report.journal.listed.update((f.name, f) for f in listing)
        dates: Dates = {}  # read once a pass
        self._recorded.pop(replica_id, None)
        intent, first = None, True
        while True:
            with self.store.read() as s:  # a crash's intent looked up with the first changes
                if first:
                    intent = s.execute(_INTENT_ROW, {"rid": replica_id}).first()
                report.applied_seq = s.scalar(_APPLIED_SEQ, {"rid": replica_id})
                start = report.applied_seq + 1
                rows = list(s.execute(_NEXT_CHANGES, {"rid": replica_id, "start": start, "limit": self.window}))
            if first:
                first = False
                if intent is not None:  # the id map is read after this, per group: no changes read again
                    self._reconcile(replica_id, session, report, intent)
            changes: list[tuple[int, Change]] = []
            for seq, text in rows:
                if seq != start + len(changes):
                    break  # a gap: stop this mailbox until it is filled
                changes.append((seq, Change.from_dict(json.loads(text))))
            held: frozenset[int] = frozenset()
            if changes and self.gate is not None:
                eligible, held = self.gate(replica_id, changes)
                changes = changes[:eligible]
            if not changes:
                break
            for aside, run in runs(changes, held):
                if aside:
                    self._set_aside(replica_id, run[0][0], run[-1][0], report)
                    continue
                for group in plan(run, append_batch=self.append_batch, append_bytes=self.append_bytes):
                    self._apply(replica_id, group, session, report, dates)
                    if self.on_applied is not None:
                        self.on_applied(replica_id)  # committed: the source may hear of it now
        return report

    def _set_aside(self, rid: int, first: int, last: int, report: ReplayReport) -> None:
        """Changes ``first..last`` held by the gate: kept (state ``held``), the cursor moves past them."""
        with self.store.tx() as s:
            rep = s.get(Replica, rid)
            if rep.applied_seq != first - 1:
                raise StoreError(f"replica {rid}: applied {rep.applied_seq}, held run starts at {first}", retryable=False)
            rep.applied_seq = report.applied_seq = last
            s.execute(update(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq >= first, InboxRow.seq <= last,
                                             InboxRow.state == "received").values(state="held"))
        report.held += last - first + 1

    # ------------------------------------------------------------------ groups

    def _apply(self, rid: int, g: Group, session: MailboxSession, report: ReplayReport,
               dates: Dates | None = None) -> None:
        k = g.kind
        if k in (Kind.MSG_ADD, Kind.MSG_REPLACE):
            self._apply_adds(rid, g, session, report, {} if dates is None else dates)
        elif k == Kind.MSG_EXPUNGE:
            entries = self._mapped(rid, [c.mid for _, c in g.items])
            for (folder, uidvalidity), uids in by_folder(entries.values()).items():
                session.expunge(folder, uids)
                report.journal.expunged(folder, uidvalidity, uids)
            self._done(rid, g, report, drop_mids=list(entries))
        elif k == Kind.MSG_FLAGS:
            entries = self._mapped(rid, [c.mid for _, c in g.items])
            flags = frozenset(g.items[0][1].flags or ())
            for (folder, uidvalidity), uids in by_folder(entries.values()).items():
                session.store_flags(folder, uids, flags)
                report.journal.flags_stored(folder, uidvalidity, uids, flags)
            self._done(rid, g, report)
        elif k == Kind.MSG_MOVE:
            self._apply_moves(rid, g, session, report)
        elif k == Kind.FOLDER_CREATE:
            ch = g.items[0][1]
            report.journal.created(ch.folder)
            session.create_folder(ch.folder, frozenset(ch.special_use or ()))
            self._done(rid, g, report)
        elif k == Kind.FOLDER_RENAME:
            report.journal.void()
            ch = g.items[0][1]
            session.rename_folder(ch.folder, ch.new_folder)
            self._done(rid, g, report, rename=(ch.folder, ch.new_folder))
        elif k == Kind.FOLDER_DELETE:
            report.journal.void()
            kept = plan_delete(self.store, rid, g.folder, session) if self.keep_unknown else None
            if kept is None:
                session.delete_folder(g.folder)
            else:
                session.expunge(g.folder, kept.known)
                log.warning("replica %s: folder %r deleted on the other side is kept: it holds %d message(s) and "
                            "%d subfolder(s) the id map does not know", rid, g.folder, len(kept.unknown),
                            len(kept.subfolders))
            self._done(rid, g, report, drop_folder=g.folder)
            if kept is not None:
                report.kept_folders.append(kept.record())
        elif k == Kind.FOLDER_RESET:
            report.journal.void()
            if session.folder_info(g.folder) is None:  # gone here too (wiped): an empty folder stays a folder
                with self.store.read() as s:  # and a special folder stays one
                    special_use = ReplicaFolders(s, rid).special_use(g.folder)
                session.create_folder(g.folder, special_use)
            report.last_reset_seq = g.last_seq
            with self.store.tx(durable=False) as s:
                for e in IdMap(s, rid).take_folder(g.folder):
                    s.add(Orphan(replica_id=rid, folder=e.folder, uidvalidity=e.uidvalidity, uid=e.uid, sha256=e.sha256))
                self._advance(s, rid, g, report)
        elif k == Kind.FOLDER_RESET_DONE:
            report.journal.void()
            with self.store.read() as s:
                orphans = list(s.scalars(select(Orphan).where(Orphan.replica_id == rid, Orphan.folder == g.folder)))
            info = session.folder_info(g.folder) if orphans else None
            # an orphan of an older UIDVALIDITY (the folder was recreated here) is gone already:
            # its UID may name another message now. Nor is a UID the id map holds now an orphan's:
            # a folder recreated with the UIDVALIDITY it had (a server that takes it from the
            # clock, its record of used values wiped with the folder) gives old UIDs to the
            # messages this reset wrote or kept.
            written: set[int] = set()
            if info is not None:
                with self.store.read() as s:
                    written = {e.uid for e in IdMap(s, rid).in_folder(g.folder) if e.uidvalidity == info.uidvalidity}
            stale = sorted({o.uid for o in orphans
                            if info is not None and o.uidvalidity == info.uidvalidity and o.uid not in written})
            if stale:
                session.expunge(g.folder, stale)
            with self.store.tx(durable=False) as s:
                s.execute(delete(Orphan).where(Orphan.replica_id == rid, Orphan.folder == g.folder))
                self._advance(s, rid, g, report)
        else:  # pragma: no cover - Kind is closed
            raise ValueError(f"unknown change kind {k}")

    def _apply_adds(self, rid: int, g: Group, session: MailboxSession, report: ReplayReport,
                    dates: Dates) -> None:
        with self.store.read() as s:
            mapped = IdMap(s, rid).mapped(c.mid for _, c in g.items)
            orphans: dict[str, list[Orphan]] = {}  # Core rows (id, folder, UIDVALIDITY, UID, SHA-256)
            for o in s.execute(_ORPHANS_IN, {"rid": rid, "folder": g.folder}):
                orphans.setdefault(o.sha256, []).append(o)
        claims: list[tuple[int, Change, Orphan]] = []
        todo: list[tuple[int, Change]] = []
        for seq, ch in g.items:
            if ch.mid in mapped:
                continue  # written before a crash and recovered: not again
            bucket = orphans.get(ch.sha256)
            kept = same_copy(bucket, ch, g.folder, session, dates) if bucket else None
            if kept is not None:
                bucket.remove(kept)
                claims.append((seq, ch, kept))
            else:
                todo.append((seq, ch))  # written anew; an orphan not claimed goes at RESET_DONE
        if claims:
            claims, wrong = proven(claims, g.folder, session)
            if wrong:  # another message sits at that UID: this one is written again
                todo = sorted(todo + wrong, key=lambda t: t[0])
            report.journal.touch([g.folder])
        for _, ch, o in claims:  # a reset folder keeps the message it already has
            session.store_flags(g.folder, [o.uid], frozenset(ch.flags or ()))
        new_entries: list[MapEntry] = [
            MapEntry(mid=ch.mid, folder=g.folder, uidvalidity=o.uidvalidity, uid=o.uid, sha256=o.sha256)
            for _, ch, o in claims
        ]
        rejected: list[tuple] = []  # (seq, change, reason, MessageIdentity)
        altered: list[Alteration] = []
        if todo:
            new_entries += self._append(rid, g.folder, todo, session, rejected, report, altered)
        replaced = [c.old_mid for _, c in g.items if c.kind == Kind.MSG_REPLACE]
        if replaced:
            old = self._mapped(rid, replaced)
            report.journal.touch(e.folder for e in old.values())
            for e in old.values():
                session.expunge(e.folder, [e.uid])
        with self.store.tx(durable=False) as s:
            ids = IdMap(s, rid)
            ids.put(new_entries)  # set-based: replaces whatever rows these message ids had
            for o in (o for _, _, o in claims):
                s.execute(delete(Orphan).where(Orphan.id == o.id))
            ids.drop(replaced)
            rep = s.get(Replica, rid) if rejected or altered else None
            for seq, ch, reason, who in rejected:
                s.add(RejectedMessage(replica_id=rid, seq=seq, mid=ch.mid, folder=ch.folder, sha256=ch.sha256, reason=reason,
                                      message_id=who.message_id, subject=who.subject, msg_date=who.date))
                s.execute(update(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq == seq).values(state="rejected"))
                log.warning("%s/%s: the standby rejected a message (seq %s, folder %r, %s): %s", rep.server,
                            rep.address, seq, ch.folder, who.describe(), reason)
            for a in altered:
                s.add(AlteredMessage(replica_id=rid, seq=a.seq, mid=a.change.mid, folder=g.folder, sha256=a.change.sha256,
                                     standby_sha256=a.standby_sha256, sent_size=a.sent_size, stored_size=a.stored_size,
                                     what=a.what, message_id=a.who.message_id, subject=a.who.subject, msg_date=a.who.date))
                log.warning("%s/%s: the standby altered a message (seq %s, folder %r, %s): %s", rep.server,
                            rep.address, a.seq, g.folder, a.who.describe(), a.what)
            s.execute(_DROP_INTENT, {"rid": rid})
            self._advance(s, rid, g, report, skip_states={r[0] for r in rejected})
        report.rejected += len(rejected)
        report.altered += len(altered)

    def _intend(self, rid: int, folder: str, info: FolderInfo, first_seq: int, last_seq: int) -> None:
        """Record durably, before the write, where it will put messages (replacing an earlier intent)."""
        with self.store.tx() as s:
            s.execute(_DROP_INTENT, {"rid": rid})
            s.execute(insert(_INTENT), {"replica_id": rid, "folder": folder, "uidvalidity": info.uidvalidity,
                                        "uidnext": info.uidnext, "first_seq": first_seq, "last_seq": last_seq,
                                        "created_at": utcnow()})

    def _append(self, rid, folder, todo, session, rejected, report, altered) -> list[MapEntry]:
        """MULTIAPPEND ``todo`` under an intent; on rejection retry one by one to find the culprit.
        What the standby stored otherwise than sent goes to ``altered`` (``replay_check``)."""
        bodies = self._bodies(rid, [c.sha256 for _, c in todo])
        items = [
            AppendItem(bodies[c.sha256], frozenset(c.flags or ()), parse_internaldate(c.internaldate))
            for _, c in todo
        ]
        info = report.journal.listed_before(folder) or session.folder_info(folder)
        if info is None:
            report.journal.void()  # a folder the listing at the start of the pass did not have
            session.create_folder(folder)
            info = session.folder_info(folder)
            if info is None:
                raise FolderNotFound(f"folder {folder!r} could not be created")
        self._intend(rid, folder, info, todo[0][0], todo[-1][0])
        try:
            res = session.append(folder, items)
        except MessageRejected as exc:
            if len(todo) == 1:
                rejected.append((todo[0][0], todo[0][1], str(exc) or "rejected by the server",
                                 identity(bodies[todo[0][1].sha256])))
                return []
            out: list[MapEntry] = []
            for one in todo:
                out += self._append(rid, folder, [one], session, rejected, report, altered)
            return out
        report.appended += len(todo)
        altered += check_written(session, folder, [(seq, c, bodies[c.sha256], uid)
                                                   for (seq, c), uid in zip(todo, res.uids)])
        report.journal.appended(folder, info, res, [c for _, c in todo])
        return [
            MapEntry(mid=c.mid, folder=folder, uidvalidity=res.uidvalidity, uid=uid, sha256=c.sha256)
            for (_, c), uid in zip(todo, res.uids)
        ]

    def _apply_moves(self, rid: int, g: Group, session: MailboxSession, report: ReplayReport) -> None:
        dest = g.items[0][1].new_folder
        entries = self._mapped(rid, [c.mid for _, c in g.items])
        report.journal.touch([dest, *(e.folder for e in entries.values())])
        todo = {mid: e for mid, e in entries.items() if e.folder != dest}
        moved: dict[int, tuple[int, int]] = {}  # mid -> (uidvalidity, uid)
        if todo:
            info = report.journal.listed_before(dest) or session.folder_info(dest)
            if info is None:
                report.journal.void()
                session.create_folder(dest)
                info = session.folder_info(dest)
            self._intend(rid, dest, info, g.first_seq, g.last_seq)
            by_folder: dict[str, list[MapEntry]] = {}
            for e in todo.values():
                by_folder.setdefault(e.folder, []).append(e)
            for folder, es in by_folder.items():
                uidmap = session.move(folder, [e.uid for e in es], dest)
                for e in es:
                    if e.uid in uidmap:
                        moved[e.mid] = (info.uidvalidity, uidmap[e.uid])
        # flags travel with the move (they may have changed in the same capture cycle)
        by_flags: dict[frozenset[str], list[int]] = {}
        for _, c in g.items:
            loc = moved.get(c.mid) or ((entries[c.mid].uidvalidity, entries[c.mid].uid) if c.mid in entries and c.mid not in todo else None)
            if loc is not None and c.flags is not None:
                by_flags.setdefault(frozenset(c.flags), []).append(loc[1])
        for flags, uids in by_flags.items():
            session.store_flags(dest, uids, flags)
        missing = [(seq, c) for seq, c in g.items if c.mid in todo and c.mid not in moved]
        with self.store.tx(durable=False) as s:
            ids = IdMap(s, rid)
            for mid, (uv, uid) in moved.items():
                ids.relocate(mid, dest, uv, uid)
            for seq, c in missing:
                ids.drop([c.mid])
                s.add(RejectedMessage(replica_id=rid, seq=seq, mid=c.mid, folder=c.folder, sha256=None,
                                      reason=f"message to move to {dest!r} was missing on this server"))
            s.execute(delete(ReplayIntent).where(ReplayIntent.replica_id == rid))
            self._advance(s, rid, g, report)

    # ------------------------------------------------------------------ crash recovery

    def _reconcile(self, rid: int, session: MailboxSession, report: ReplayReport, intent=None) -> None:
        """Recover from a crash between a write of messages and its bookkeeping (``intent``: the
        replica's intent row, when the caller has just read it; else looked up here)."""
        report.recovered += reconcile(self.store, lambda shas: self._bodies(rid, shas), rid, session,
                                      report.journal, intent)

    # ------------------------------------------------------------------ bookkeeping

    def _mapped(self, rid: int, mids: Sequence[int]) -> dict[int, MapEntry]:
        with self.store.read() as s:
            return IdMap(s, rid).entries(mids)

    def _bodies(self, rid: int, shas: Sequence[str]) -> dict[str, bytes]:
        try:
            return self.bodies.load(shas)
        except BodyCorrupt as exc:
            # never replay wrong bytes: drop the damaged body and ask the source for it again
            self.bodies.forget(exc.sha256)
            self._request_resend(rid, str(exc))
            raise

    def _request_resend(self, rid: int, reason: str) -> None:
        """Forget what was received beyond what is applied; the source sends it again."""
        with self.store.tx() as s:
            rep = s.get(Replica, rid)
            s.execute(delete(InboxRow).where(InboxRow.replica_id == rid, InboxRow.seq > rep.applied_seq))
            rep.received_seq = rep.applied_seq
            rep.error = f"{reason}; asked the source to send it again"
        log.error("replica %s: %s; re-requesting from sequence %d", rid, reason, rep.applied_seq + 1)

    def _done(self, rid, g, report, *, drop_mids=(), rename=None, drop_folder=None) -> None:
        with self.store.tx(durable=False) as s:
            ids = IdMap(s, rid)
            ids.drop(drop_mids)
            if rename:
                old, new = rename
                ids.rename_folder(old, new)
                for e in s.scalars(select(Orphan).where(Orphan.replica_id == rid)):
                    if e.folder == old or e.folder.startswith(old + "/"):
                        e.folder = new + e.folder[len(old):]
            if drop_folder:
                ids.drop_folder(drop_folder)
                s.execute(delete(Orphan).where(Orphan.replica_id == rid, Orphan.folder == drop_folder))
            self._advance(s, rid, g, report)

    def _advance(self, s, rid: int, g: Group, report: ReplayReport, skip_states=frozenset()) -> None:
        self._note_folders(s, rid, g)
        # the group continues the applied sequence, or nothing is recorded (one statement, no load)
        moved = s.execute(_ADVANCE, {"rid": rid, "before": g.first_seq - 1, "last": g.last_seq, "at": utcnow()})
        if moved.rowcount != 1:
            applied = s.scalar(select(_REPLICA.c.applied_seq).where(_REPLICA.c.id == rid))
            raise StoreError(f"replica {rid}: applied {applied}, group starts at {g.first_seq}", retryable=False)
        if skip_states:
            s.execute(
                update(InboxRow)
                .where(InboxRow.replica_id == rid, InboxRow.seq >= g.first_seq, InboxRow.seq <= g.last_seq,
                       InboxRow.state == "received", InboxRow.seq.not_in(list(skip_states)))
                .values(state="applied")
            )
        else:
            s.execute(_MARK_APPLIED, {"rid": rid, "first": g.first_seq, "last": g.last_seq})
        report.applied += len(g.items)
        report.applied_seq = g.last_seq


    def _note_folders(self, s, rid: int, g: Group) -> None:
        """The folders the server's copy must have now, as the group's changes say (flag changes
        and expunges say nothing new). A folder written into that this pass has already seen
        recorded is not looked up again: one lookup per folder and pass, not per group."""
        if g.kind in (Kind.MSG_FLAGS, Kind.MSG_EXPUNGE, Kind.FOLDER_RESET_DONE):
            return
        seen = self._recorded.setdefault(rid, set())
        first = g.items[0][1]
        into = first.new_folder if g.kind == Kind.MSG_MOVE else g.folder
        if g.kind in _WRITES_INTO:
            if into in seen:
                return
            ReplicaFolders(s, rid).applied([first])  # the group's changes all name that folder
        else:
            ReplicaFolders(s, rid).applied(c for _, c in g.items)
        if g.kind in (Kind.FOLDER_RENAME, Kind.FOLDER_DELETE):
            seen.clear()
        else:
            seen.add(into)
