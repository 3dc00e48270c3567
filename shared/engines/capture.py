"""Capture engine: adapter changes -> sequenced outbox rows, durably.

One *cycle* brings a mailbox's outbox up to date with its server:

1. Finish pending work of earlier cycles (new messages whose bodies were not yet captured).
2. List folders; compare with what is known (by folder id where the server has one, else by
   name): created, renamed, deleted, reset (UIDVALIDITY changed or the folder was recreated).
   Renames and creates are written (and shipped) in an order in which each takes a free name:
   a name given up in the cycle is freed before it is taken again, a swap goes through a
   temporary name (``capture_state.folder_order``).
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

New messages that fit in one chunk (the usual case once a mailbox is seeded: a delivery or
two) are fetched before step 5 and written by its transaction, cursors advanced: a cycle that
captures a new message is one writing transaction, not a plan and then a chunk.

A cycle that finds nothing (every folder's cursor as known) writes nothing: with hundreds of
mailboxes polled, each writing transaction would queue for the state store's one writer and be
flushed to disk. ``Mailbox.last_capture_at`` is noted in the commits a cycle makes anyway, and
for an idle mailbox once every ``idle_note_seconds``. What a cycle reads of the store before it
asks the server (the queue gate's check, the known folders and their pending work, the
mailbox's phase) is one read transaction.

With a ``QueueGate`` (the source gateway's back-pressure), a cycle asks it before it takes work
(before planning and before each chunk): while the copy queue is at its bound or the state
store's disk is full, the cycle stops there, with the cursors where the last commit left them,
and says why (``CycleReport.paused``). A write that fails for lack of space (``DiskFull``) rolled
back whole; the cycle stops the same way and the next one tries again.

Every change gets the next sequence number of its mailbox inside the transaction that writes it
(``Mailbox.last_seq``), so the outbox is gap-free and a crash at any point resumes exactly where
the last commit left off: pending UIDs that vanished meanwhile are skipped, nothing is sent twice.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from sqlalchemy import bindparam, select

from mailrepl.shared.adapters.base import FetchedMessage, FolderDelta, FolderInfo, MailboxSession, MessageMeta
from mailrepl.shared.engines.capture_writes import (
    CycleReport, Seq, Spooled, body_hashes, expunge_unreplaced, release_segment, spool_bodies, write_messages,
)
from mailrepl.shared.engines.queue_gate import QueueGate
from mailrepl.shared.capture_state import (
    CaptureState, CatalogRow, KnownFolder, known_folders, pair_folders,
)
from mailrepl.shared.capture_state.folder_order import order_folder_steps
from mailrepl.shared.errors import CursorInvalid, DiskFull, FolderNotFound
from mailrepl.shared.model import Change, Cursor, Kind, UidSet, utcnow
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Mailbox

__all__ = ["CaptureEngine", "CycleReport", "DEFAULT_CHUNK_MESSAGES", "DEFAULT_CHUNK_BYTES"]

log = logging.getLogger("mailrepl.capture")

DEFAULT_CHUNK_MESSAGES = 200
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
STREAM_CHUNKS = 10  # chunks fetched in one stream (its FETCH commands pipelined)
IDLE_NOTE_SECONDS = 300.0  # how stale Mailbox.last_capture_at may get while nothing changes


def _is_draft(flags: Iterable[str]) -> bool:
    return any(f.lower() == "\\draft" for f in flags)


@dataclass
class _FolderPlan:
    info: FolderInfo
    row_id: int | None = None  # known folder_state id
    since: Cursor | None = None
    reset: bool = False
    delta: FolderDelta | None = None
    moves_in: list[tuple[MessageMeta, CatalogRow]] = field(default_factory=list)
    replaces: dict[int, int] = field(default_factory=dict)  # new uid -> old mid
    idle: bool = False  # known, same name, id and cursor: nothing to write for it
    fetched: list[FetchedMessage] | None = None  # new messages captured with the plan (None: left pending)

    def todo(self) -> list[MessageMeta]:
        """The new messages to capture (those paired with a vanished one are moves)."""
        paired = {m.uid for m, _ in self.moves_in}
        return [m for m in self.delta.new if m.uid not in paired]


@dataclass(frozen=True)
class _Start:
    """What a cycle reads of the store before it asks the server, in one read transaction."""

    known: list[KnownFolder]
    phase: str
    error: str | None


_NO_LOCK = contextlib.nullcontext()
_PHASE_QUERY = select(Mailbox.phase, Mailbox.error).where(Mailbox.id == bindparam("mailbox_id"))  # built once


class CaptureEngine:
    """Runs capture cycles; holds no per-mailbox state between cycles (it is all in the store),
    but for folder resyncs asked for (:meth:`request_resync`) and not yet begun: those are begun
    by the mailbox's next cycle, and lost if the process stops first."""

    def __init__(
        self,
        store: Store,
        *,
        chunk_messages: int = DEFAULT_CHUNK_MESSAGES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        body_lock: threading.Lock | None = None,
        gate: QueueGate | None = None,
        idle_note_seconds: float = IDLE_NOTE_SECONDS,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        # told after each chunk of captured messages commits (the shipper may send it while the
        # rest of the mailbox is still being read)
        self.on_committed = on_committed
        self.idle_note_seconds = idle_note_seconds
        self._noted: dict[int, float] = {}  # mailbox id -> monotonic time last_capture_at was written
        self._caught_up: dict[int, int] = {}  # mailbox id -> cycles that ended caught up (written or not)
        self.gate = gate  # back-pressure: None takes work whatever the queue
        self.body_lock = body_lock or threading.Lock()  # held with the shipper's body GC
        self.chunk_messages = chunk_messages
        self.chunk_bytes = chunk_bytes
        self._resync: dict[int, set[str]] = {}  # mailbox id -> folders to read again from nothing
        self._resync_lock = threading.Lock()

    # ------------------------------------------------------------------ public

    def request_resync(self, mailbox_id: int, folders: Iterable[str]) -> None:
        """Read these folders again from nothing at the mailbox's next cycle, as after a change of
        UIDVALIDITY (a folder reset): the standby keeps each copy that is the same message in
        everything but its flags (and gets the flags), gets again what it lacks or holds otherwise,
        and loses the copies replication wrote (or was told to remove) that the primary lacks."""
        with self._resync_lock:
            self._resync.setdefault(mailbox_id, set()).update(folders)

    def _begin_resyncs(self, mailbox_id: int, report: CycleReport) -> bool:
        """Begin the resyncs asked for; True if any was (the known folders changed)."""
        with self._resync_lock:
            wanted = self._resync.pop(mailbox_id, None)
        if not wanted:
            return False
        try:
            self._reset_for_resync(mailbox_id, wanted, report)
        except BaseException:
            with self._resync_lock:  # not begun: asked again at the next cycle
                self._resync.setdefault(mailbox_id, set()).update(wanted)
            raise
        return True

    def _reset_for_resync(self, mailbox_id: int, wanted: set[str], report: CycleReport) -> None:
        with self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id, with_for_update=True)
            seq = Seq(s, mbx, report)
            st = CaptureState(s, mailbox_id)
            for k in known_folders(s, mailbox_id):
                if k.name in wanted and k.cursor is not None and not k.pending:
                    st.reset_folder(k.id)
                    seq.emit(Change(Kind.FOLDER_RESET, k.name))
                    log.info("mailbox %s: folder %r read again from nothing (resync asked for)", mailbox_id, k.name)

    def cycle(self, mailbox_id: int, session: MailboxSession) -> CycleReport:
        report = CycleReport()
        try:
            start = self._start(mailbox_id, report)
            if start is None:
                return report
            known: list[KnownFolder] | None = start.known
            left = [k.id for k in start.known if k.pending]
            if left:  # work an earlier cycle left pending goes first
                self._drain_all(mailbox_id, left, session, report)
                if report.paused:
                    return report
                known = None  # its cursors moved: read again
            if self._begin_resyncs(mailbox_id, report):
                known = None
            plans, deleted = self._plan(mailbox_id, session, known)
            self._pair(mailbox_id, plans, deleted, session)
            self._fetch_new(plans, session)
            pending: list[int] = []
            if deleted or not all(p.idle for p in plans):
                pending = self._commit_plan(mailbox_id, plans, deleted, report)
            self._drain_all(mailbox_id, pending, session, report)
            if report.paused:
                return report
            self._finish(mailbox_id, report, start)
            with self._resync_lock:
                self._caught_up[mailbox_id] = self._caught_up.get(mailbox_id, 0) + 1
        except DiskFull as exc:
            if self.gate is None:
                raise
            self.gate.disk_full(exc)  # the failed transaction rolled back: cursors as committed before
            report.paused = f"disk full: {exc}"
            return report
        if self.gate is not None:
            self.gate.disk_ok()
        return report

    def cycles_caught_up(self, mailbox_id: int) -> int:
        """How many cycles of the mailbox ended caught up with its server since start (an idle
        cycle writes nothing, so this, not ``last_capture_at``, tells that one ran)."""
        with self._resync_lock:
            return self._caught_up.get(mailbox_id, 0)

    def _held(self, mailbox_id: int, report: CycleReport, s=None) -> bool:
        """True (and why in ``report``) if the gate says to take no more work now (asked in the
        read transaction ``s`` if given)."""
        if self.gate is None:
            return False
        report.paused = self.gate.hold(mailbox_id, s)
        return report.paused is not None

    def _start(self, mailbox_id: int, report: CycleReport) -> _Start | None:
        """The gate's check, the known folders (with the work left pending in them) and the
        mailbox's phase, in one read transaction; None if the gate holds the cycle (why in
        ``report``) or the mailbox is gone."""
        with self.store.read() as s:
            if self._held(mailbox_id, report, s):
                return None
            row = s.execute(_PHASE_QUERY, {"mailbox_id": mailbox_id}).first()
            if row is None:
                return None
            return _Start(known_folders(s, mailbox_id), row.phase, row.error)

    def _finish(self, mailbox_id: int, report: CycleReport, start: _Start) -> None:
        """End of a cycle that caught up. A cycle that found nothing writes nothing (a poll of
        hundreds of idle mailboxes must not queue hundreds of durable transactions), and one
        that wrote noted ``last_capture_at`` in its own commits: the transaction here is made
        only to end seeding, clear an error, or note ``last_capture_at`` of an idle mailbox once
        every ``idle_note_seconds``. Phase and error are as the cycle's start read them: only
        this method and protection change them, and a mailbox's cycles never overlap."""
        ends_seeding = start.phase == "seeding" and report.pending == 0
        clears_error = bool(start.error)
        now = time.monotonic()
        if report.wrote:
            self._noted[mailbox_id] = now
        noted = self._noted.get(mailbox_id)
        if not (ends_seeding or clears_error or noted is None or now - noted >= self.idle_note_seconds):
            return
        with self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id)
            mbx.last_capture_at = utcnow()
            if mbx.phase == "seeding" and report.pending == 0:
                mbx.phase = "replicating"
            if mbx.error:
                mbx.error = None
        self._noted[mailbox_id] = now

    def resync(self, mailbox_id: int) -> int:
        """Read every folder of the mailbox again from nothing (its copy was damaged): a folder
        reset of each now, in one transaction; the next cycle captures every message again and
        ends each reset. Returns how many folders were reset."""
        with self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id, with_for_update=True)
            seq = Seq(s, mbx, CycleReport())
            st = CaptureState(s, mailbox_id)
            folders = sorted(known_folders(s, mailbox_id), key=lambda f: f.name.count("/"))
            for f in folders:
                st.reset_folder(f.id)
                seq.emit(Change(Kind.FOLDER_RESET, f.name))
        return len(folders)

    # ------------------------------------------------------------------ planning

    def _plan(self, mailbox_id: int, session: MailboxSession, known: list[KnownFolder] | None):
        live = session.list_folders()
        if known is None:
            with self.store.read() as s:
                known = known_folders(s, mailbox_id)
        matches, deleted = pair_folders(known, live, session.features.folder_id)
        plans: list[_FolderPlan] = []
        for m in matches:
            plan = _FolderPlan(info=m.info)
            row = m.known
            if row is not None:
                plan.row_id = row.id
                plan.reset = m.identity_changed
                plan.since = None if plan.reset else row.cursor
                if row.pending:
                    continue  # could not drain (e.g. server error); next cycle
                if not plan.reset and row.cursor is not None and row.cursor == m.info.cursor:
                    plan.delta = FolderDelta(cursor=row.cursor)
                    plan.idle = row.name == m.info.name and m.info.fid in ("", row.fid)
            plans.append(plan)
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

    def _pair(self, mailbox_id: int, plans: list[_FolderPlan], deleted: list[KnownFolder],
              session: MailboxSession) -> None:
        """Find moves (vanished here, new there, same message) and draft replaces."""
        vanished: list[CatalogRow] = []
        if not deleted and not any(p.row_id is not None and not p.reset and p.delta.vanished for p in plans):
            return
        with self.store.read() as s:
            st = CaptureState(s, mailbox_id)
            for p in plans:
                if p.row_id is None or p.reset or not p.delta.vanished:
                    continue
                vanished += st.entries_at(p.row_id, p.delta.vanished)
            for f in deleted:
                vanished += st.entries_in(f.id)
        if not vanished:
            return
        candidates = [(p, m) for p in plans if not p.reset for m in p.delta.new]
        if not candidates:
            return
        use_guid = session.features.message_guid
        # by message GUID where the server has them and the catalogue knows the message's (the
        # standby view catalogues what the replayer appended without one), else by content hash
        by_guid: dict[str, list[CatalogRow]] = {}
        by_sha: dict[str, list[CatalogRow]] = {}
        for entry in vanished:
            if use_guid and entry.guid:
                by_guid.setdefault(entry.guid, []).append(entry)
            elif entry.sha256:
                by_sha.setdefault(entry.sha256, []).append(entry)
        guids = {(id(p), m.uid): m.guid for p, m in candidates if use_guid and m.guid}
        shas: dict[tuple[int, int], str] = {}
        if by_sha:
            # hash the new messages' bodies (read only, nothing shipped here)
            for p in {id(p): p for p, _ in candidates}.values():
                for msg in session.fetch(p.info.name, [m.uid for m in p.delta.new]):
                    shas[(id(p), msg.uid)] = hashlib.sha256(msg.body).hexdigest()
        for p, m in candidates:
            bucket = by_guid.get(guids.get((id(p), m.uid)) or "") or by_sha.get(shas.get((id(p), m.uid)) or "")
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

    def _fetch_new(self, plans: list[_FolderPlan], session: MailboxSession) -> None:
        """New messages that fit in one chunk are fetched now, to be written by the plan's own
        transaction (one writing transaction for the cycle); more stay pending work, drained
        chunk by chunk. A message expunged meanwhile is not fetched: skipped, as in a drain."""
        todo = {id(p): p.todo() for p in plans}
        count = sum(len(t) for t in todo.values())
        if not count or count > self.chunk_messages or \
                sum(m.size for t in todo.values() for m in t) > self.chunk_bytes:
            return
        try:
            for p in plans:
                uids = [m.uid for m in todo[id(p)]]
                if not uids:
                    continue
                stream = session.fetch(p.info.name, uids)
                try:
                    p.fetched = list(stream)
                finally:
                    stream.close()
        except FolderNotFound:  # gone since the delta: left pending, as a larger set would be
            for p in plans:
                p.fetched = None

    # ------------------------------------------------------------------ commit

    def _commit_plan(self, mailbox_id, plans, deleted: list[KnownFolder], report: CycleReport) -> list[int]:
        """Commit the plan; returns the folders left with pending work (to drain)."""
        shas = {id(p): body_hashes(p.fetched) for p in plans if p.fetched is not None}  # outside the write lock
        pending: list[int] = []
        with self.body_lock if any(p.fetched for p in plans) else _NO_LOCK, self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id, with_for_update=True)
            mbx.last_capture_at = utcnow()
            report.wrote = True
            seq = Seq(s, mbx, report)
            st = CaptureState(s, mailbox_id)
            seeding = mbx.phase == "seeding"
            # 1. creates and renames, parents first, each onto a free name (a name given up in
            #    this cycle is freed before it is taken again; swaps go through a temporary name)
            names = st.folder_names()
            new = {p.info.name: p for p in plans if p.row_id not in names}
            targets = {p.row_id: p.info.name for p in plans if p.row_id in names}
            for step in order_folder_steps(names, targets, new):
                if step.old is None:
                    p = new[step.new]
                    p.row_id = st.create_folder(p.info)
                    seq.emit(Change(Kind.FOLDER_CREATE, p.info.name, special_use=tuple(p.info.special_use)))
                else:
                    seq.emit(Change(Kind.FOLDER_RENAME, step.old, new_folder=step.new))
                    st.rename_folder(step.old, step.new)
            for p in plans:
                st.note_folder(p.row_id, p.info)
            # 2. moves (the body is not sent again)
            for p in plans:
                for meta, entry in p.moves_in:
                    src = st.folder_name(entry.folder_id)
                    seq.emit(
                        Change(
                            Kind.MSG_MOVE,
                            src if src is not None else _deleted_name(deleted, entry.folder_id),
                            mid=entry.mid,
                            new_folder=p.info.name,
                            flags=tuple(meta.flags),
                        )
                    )
                    st.move_entry(entry.mid, p.row_id, meta.uid, meta.flags)
            spare = {e.mid for p in plans for _, e in p.moves_in} | {mid for p in plans for mid in p.replaces.values()}
            # 3. expunges and flag changes
            for p in plans:
                if p.reset or p.delta is None:
                    continue
                name = p.info.name
                if p.delta.vanished:
                    for mid in st.expunge_at(p.row_id, p.delta.vanished, spare):
                        seq.emit(Change(Kind.MSG_EXPUNGE, name, mid=mid))
                if p.delta.changed:
                    for mid, text in st.update_flags(p.row_id, {m.uid: m.flags for m in p.delta.changed}):
                        seq.emit(Change(Kind.MSG_FLAGS, name, mid=mid, flags=tuple(text.split())))
            # 4. resets: the standby keeps matching messages, drops the rest after re-adds
            for p in plans:
                if p.reset:
                    st.reset_folder(p.row_id)
                    seq.emit(Change(Kind.FOLDER_RESET, p.info.name))
            st.flush()  # moved catalog rows leave their folder before it is deleted
            # 5. deletes, children first
            for f in sorted(deleted, key=lambda f: -f.name.count("/")):
                seq.emit(Change(Kind.FOLDER_DELETE, st.folder_name(f.id)))
                st.delete_folder(f.id)  # catalog rows of messages not moved out go with it
            # 6. new messages, captured now or left pending; cursors of folders with nothing pending
            for p in plans:
                todo = p.todo()
                if todo and seeding:
                    mbx.seed_msgs_total += len(todo)
                    mbx.seed_bytes_total += sum(m.size for m in todo)
                if todo and p.fetched is None:
                    st.set_pending(p.row_id, p.delta.cursor, (m.uid for m in todo), p.replaces)
                    pending.append(p.row_id)
                    continue
                if todo:
                    replace = dict(p.replaces)
                    write_messages(s, st, seq, p.row_id, p.info.name, p.fetched, shas[id(p)], replace,
                                   self.store, report)
                    expunge_unreplaced(st, seq, p.info.name, replace)
                if st.advance(p.row_id, p.delta.cursor):
                    seq.emit(Change(Kind.FOLDER_RESET_DONE, p.info.name))
        return pending

    # ------------------------------------------------------------------ draining

    def _drain_all(self, mailbox_id: int, pending: list[int], session: MailboxSession, report: CycleReport) -> None:
        for folder_id in pending:
            self._drain(mailbox_id, folder_id, session, report)
            if report.paused:
                return

    def _drain(self, mailbox_id: int, folder_id: int, session: MailboxSession, report: CycleReport) -> None:
        while True:
            if self._held(mailbox_id, report):
                return  # the rest stays pending (persisted) for a later cycle
            with self.store.read() as s:
                work = CaptureState(s, mailbox_id).pending_work(folder_id)
            if work is None:
                return
            # one fetch stream over several chunks, each committed as it fills: the fetches in
            # flight go on while a chunk commits, and none is cut short and fetched again
            uids = work.uids.first(self.chunk_messages * STREAM_CHUNKS)
            replace = dict(work.replace)  # draft edits still to pair; each commit takes its own
            batch: list = []
            size = 0
            committed: UidSet | None = None  # what was left pending by this stream's last commit
            stream = session.fetch(work.name, uids)
            try:
                for msg in stream:
                    batch.append(msg)
                    size += len(msg.body)
                    if len(batch) >= self.chunk_messages or size >= self.chunk_bytes:
                        committed = work.uids.above(msg.uid)
                        self._commit_chunk(mailbox_id, folder_id, batch, committed, replace, report)
                        batch, size = [], 0
                        if not committed or self._held(mailbox_id, report):
                            return
            finally:
                stream.close()
            rest = work.uids.above(uids[-1] if uids else 0)
            if batch or committed is None or committed != rest:  # else that commit said it all
                self._commit_chunk(mailbox_id, folder_id, batch, rest, replace, report)
            if not rest:
                return  # that commit finished the folder's pending work

    def _commit_chunk(self, mailbox_id, folder_id, batch, remaining: UidSet, replace, report) -> None:
        changes = report.changes
        self._write_chunk(mailbox_id, folder_id, batch, remaining, replace, report)
        if report.changes > changes and self.on_committed is not None:
            self.on_committed()

    def _write_chunk(self, mailbox_id, folder_id, batch, remaining: UidSet, replace, report) -> None:
        shas = body_hashes(batch)  # outside the write lock
        spooled = spool_bodies(self.store, batch, shas)  # a bulk chunk's bodies: flushed outside it too
        used = None
        try:
            used = self._chunk_tx(mailbox_id, folder_id, batch, shas, remaining, replace, report, spooled)
        finally:
            if spooled is not None:
                release_segment(self.store, spooled, used=used)

    def _chunk_tx(self, mailbox_id, folder_id, batch, shas, remaining: UidSet, replace, report,
                  spooled: Spooled | None) -> bool:
        """The chunk's transaction; whether a row of it names ``spooled``'s segment."""
        with self.body_lock, self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id, with_for_update=True)
            mbx.last_capture_at = utcnow()
            report.wrote = True
            st = CaptureState(s, mailbox_id)
            name = st.folder_name(folder_id)
            seq = Seq(s, mbx, report)
            used = write_messages(s, st, seq, folder_id, name, batch, shas, replace, self.store, report, spooled)
            if remaining:
                st.shrink_pending(folder_id, remaining, replace)
                report.pending = len(remaining)
                return used
            # Replaced drafts whose replacement vanished before capture: plain expunge.
            expunge_unreplaced(st, seq, name, replace)
            report.pending = 0
            if st.finish_pending(folder_id):
                seq.emit(Change(Kind.FOLDER_RESET_DONE, name))
        return used


def _deleted_name(deleted: Sequence[KnownFolder], folder_id: int) -> str:
    for f in deleted:
        if f.id == folder_id:
            return f.name
    raise LookupError(f"folder {folder_id} unknown")
