"""Rebuilding the capture state of a copy from a server listing: a pure plan, then one applier.

Two callers: the standby view (after each replay pass, from the deltas of the folders that
moved since the view's cursors) and the end of failback (from a full listing of the primary,
once the standby's changes are replayed on it). Both know how to *identify* a listed message:
the id map says it is a message the catalogue already has (:class:`Keep`: the row moves there),
one to catalogue with a known SHA-256 (:class:`Fresh`), or nothing (it is left pending, so the
next capture cycle reports it as new).

:func:`plan_rebuild` computes what must change (no I/O); :func:`apply_rebuild` writes it in the
caller's transaction: message slots and folder names that are taken over are freed first, then
rows are forgotten, folders created or updated, catalogue rows placed, re-flagged and added, and
folders that are gone deleted last (after the messages that left them were placed elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from mailrepl.shared.adapters.base import FolderDelta, MessageMeta
from mailrepl.shared.capture_state.catalog import CatalogRow, insert_entries, placeholder_name
from mailrepl.shared.capture_state.pairing import FolderMatch, KnownFolder
from mailrepl.shared.model import Cursor, UidSet, flags_text
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import CatalogEntry, FolderState

_CATALOG = CatalogEntry.__table__
_FOLDER_T = FolderState.__table__

__all__ = ["Keep", "Fresh", "FolderListing", "FolderOutcome", "Placement", "Addition", "RebuildPlan",
           "plan_rebuild", "apply_rebuild"]


@dataclass(frozen=True)
class Keep:
    """A listed message is the catalogued message ``mid``."""

    mid: int


@dataclass(frozen=True)
class Fresh:
    """A listed message to catalogue under a new id; ``tag`` is the caller's reference to it."""

    sha256: str
    tag: int | None = None


Identify = Callable[[str, MessageMeta], "Keep | Fresh | None"]


@dataclass(frozen=True)
class FolderListing:
    """One live folder as read: its pairing and its delta since the known cursor (``None``:
    unchanged; the delta since nothing when ``reset``: the known catalogue of it is void)."""

    match: FolderMatch
    delta: FolderDelta | None
    reset: bool = False


@dataclass
class FolderOutcome:
    name: str
    row_id: int | None  # None: a new folder_state row
    fid: str
    messages: int | None
    cursor: Cursor | None = None  # None: contents unchanged (name, id and size only)
    pending: set[int] | None = None  # UIDs left for the next capture cycle (with ``cursor``)
    reset: bool = False  # its catalogue rows are forgotten first


@dataclass(frozen=True)
class Placement:
    """A catalogued message at its place now."""

    mid: int
    folder: str
    uid: int
    guid: str | None
    flags: str


@dataclass(frozen=True)
class Addition:
    folder: str
    uid: int
    guid: str | None
    sha256: str
    size: int
    flags: str
    tag: int | None = None


@dataclass
class RebuildPlan:
    folders: list[FolderOutcome] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)  # folder_state rows of folders no longer there
    dropped_uids: dict[int, list[int]] = field(default_factory=dict)  # folder row -> UIDs expunged
    dropped_mids: list[int] = field(default_factory=list)  # catalogue rows forgotten
    flags: dict[int, dict[int, str]] = field(default_factory=dict)  # folder row -> UID -> flags
    placed: list[Placement] = field(default_factory=list)
    added: list[Addition] = field(default_factory=list)
    unplaced: list[tuple[str, MessageMeta]] = field(default_factory=list)  # (folder, message) left pending


def plan_rebuild(listings: Sequence[FolderListing], gone: Sequence[KnownFolder], identify: Identify, *,
                 catalogue: Mapping[int, CatalogRow] | None = None,
                 guid_claimable: Collection[int] = ()) -> RebuildPlan:
    """What the capture state must become after ``listings``.

    With ``catalogue`` (the whole catalogue of the copy) the listings are complete: every
    catalogued message that is not placed is forgotten, and a message nobody identified whose
    GUID is that of a catalogued message of ``guid_claimable`` not placed otherwise is that
    message (moved meanwhile). Without it, the listings are deltas and what they do not mention
    stays as it is."""
    full = catalogue is not None
    plan = RebuildPlan(gone=[k.id for k in gone])
    kept: set[int] = set()
    unknown: list[tuple[FolderOutcome, MessageMeta]] = []
    for listing in listings:
        info, known, d = listing.match.info, listing.match.known, listing.delta
        out = FolderOutcome(info.name, known.id if known else None, info.fid, info.messages)
        plan.folders.append(out)
        if d is None:
            continue
        out.cursor = d.cursor
        carried = (set() if full or listing.reset or known is None or known.pending_uids is None
                   else set(known.pending_uids))
        if not full:
            out.reset = listing.reset and known is not None
            if known is not None and d.vanished:
                plan.dropped_uids.setdefault(known.id, []).extend(d.vanished)
                carried -= set(d.vanished)
            if known is not None and d.changed:
                plan.flags.setdefault(known.id, {}).update((m.uid, flags_text(m.flags)) for m in d.changed)
        out.pending = carried
        for m in d.new:
            who = identify(info.name, m)
            flags = flags_text(m.flags)
            if isinstance(who, Keep):
                plan.placed.append(Placement(who.mid, info.name, m.uid, m.guid, flags))
                kept.add(who.mid)
            elif isinstance(who, Fresh):
                plan.added.append(Addition(info.name, m.uid, m.guid, who.sha256, m.size, flags, who.tag))
            else:
                unknown.append((out, m))
    by_guid: dict[str, list[int]] = {}
    if full:
        claimable = set(guid_claimable)
        for mid, c in catalogue.items():
            if mid not in kept and c.guid and mid in claimable:
                by_guid.setdefault(c.guid, []).append(mid)
    for out, m in unknown:
        if m.guid and by_guid.get(m.guid):
            mid = by_guid[m.guid].pop()
            plan.placed.append(Placement(mid, out.name, m.uid, m.guid, flags_text(m.flags)))
            kept.add(mid)
            continue
        out.pending.add(m.uid)
        plan.unplaced.append((out.name, m))
    if full:
        plan.dropped_mids = [mid for mid in catalogue if mid not in kept]
    return plan


def apply_rebuild(s: Session, mailbox_id: int, plan: RebuildPlan,
                  known: Mapping[int, tuple[str, str, int | None]] | None = None) -> list[int]:
    """Write ``plan`` into the capture state of ``mailbox_id``; returns the ids given to
    ``plan.added``, in order. ``known``: the mailbox's folder rows as the caller has just read
    them in this transaction (row id -> name, fid, message count); a plan that only moves
    cursors and counts, flags, expunges and adds in folders that keep their rows and names is
    then written with a statement per changed folder, without loading the rows."""
    if known is not None and _in_place(plan, known):
        return _apply_in_place(s, mailbox_id, plan, known)
    rows = {f.id: f for f in s.scalars(select(FolderState).where(FolderState.mailbox_id == mailbox_id))}
    # 1. free what is taken over: the (folder, uid) slots of messages that move, the names of
    #    folders renamed or gone (a folder may take the name another one just gave up)
    placed = [p.mid for p in plan.placed]
    for part in chunks(placed):
        s.execute(update(CatalogEntry).where(CatalogEntry.mid.in_(part)).values(uid=-CatalogEntry.mid)
                  .execution_options(synchronize_session=False))
    renamed = {o.row_id for o in plan.folders if o.row_id in rows and rows[o.row_id].name != o.name}
    for folder_id in renamed | set(plan.gone):
        rows[folder_id].name = placeholder_name(folder_id)
    s.flush()
    # 2. forget
    for part in chunks(plan.dropped_mids):
        s.execute(delete(CatalogEntry).where(CatalogEntry.mid.in_(part)).execution_options(synchronize_session=False))
    for o in plan.folders:
        if o.reset and o.row_id is not None:
            s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == o.row_id))
    for folder_id, uids in plan.dropped_uids.items():
        for part in chunks(uids):
            s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == folder_id, CatalogEntry.uid.in_(part)))
    # 3. folders as they are now
    by_name: dict[str, int] = {}
    for o in plan.folders:
        row = rows.get(o.row_id) if o.row_id is not None else None
        if row is None:
            row = FolderState(mailbox_id=mailbox_id, name=o.name, fid=o.fid, resetting=False)
            s.add(row)
            s.flush()
            rows[row.id] = row
        row.name, row.fid, row.messages = o.name, o.fid or row.fid, o.messages
        if o.cursor is not None:
            row.cursor = o.cursor.format()
            row.pending_cursor = row.cursor if o.pending else None
            row.pending_uids = UidSet(o.pending).format() if o.pending else None
            row.pending_replace = None
            row.resetting = False
        by_name[o.name] = row.id
    s.flush()
    # 4. catalogue: placed, re-flagged, added
    if plan.placed:
        s.execute(update(CatalogEntry), [dict(mid=p.mid, folder_id=by_name[p.folder], uid=p.uid, flags=p.flags,
                                              **({"guid": p.guid} if p.guid else {})) for p in plan.placed])
    for folder_id, flags in plan.flags.items():
        s.execute(update(_CATALOG).where(_CATALOG.c.folder_id == folder_id, _CATALOG.c.uid == bindparam("u"))
                  .values(flags=bindparam("f")), [{"u": uid, "f": text} for uid, text in flags.items()])
    mids = _insert_added(s, mailbox_id, plan, by_name)
    # 5. folders no longer there, with what is left in them
    for part in chunks(plan.gone):
        s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id.in_(part)))
        s.execute(delete(FolderState).where(FolderState.id.in_(part)).execution_options(synchronize_session=False))
    for folder_id in plan.gone:
        s.expunge(rows.pop(folder_id))
    return mids


def _in_place(plan: RebuildPlan, known: Mapping[int, tuple[str, str, int | None]]) -> bool:
    return (not plan.gone and not plan.placed and not plan.dropped_mids
            and all(o.row_id in known and known[o.row_id][0] == o.name and not o.reset for o in plan.folders))


def _apply_in_place(s: Session, mailbox_id: int, plan: RebuildPlan,
                    known: Mapping[int, tuple[str, str, int | None]]) -> list[int]:
    """``apply_rebuild`` of a plan ``_in_place`` accepts: the same rows, written as Core statements."""
    for folder_id, uids in plan.dropped_uids.items():
        for part in chunks(uids):
            s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == folder_id, CatalogEntry.uid.in_(part)))
    by_name: dict[str, int] = {}
    for o in plan.folders:
        _, fid, messages = known[o.row_id]
        values: dict = {}
        if (o.fid or fid) != fid:
            values["fid"] = o.fid
        if o.messages != messages:
            values["messages"] = o.messages
        if o.cursor is not None:
            cursor = o.cursor.format()
            values.update(cursor=cursor, pending_cursor=cursor if o.pending else None,
                          pending_uids=UidSet(o.pending).format() if o.pending else None,
                          pending_replace=None, resetting=False)
        if values:
            s.execute(update(_FOLDER_T).where(_FOLDER_T.c.id == o.row_id).values(**values))
        by_name[o.name] = o.row_id
    for folder_id, flags in plan.flags.items():
        s.execute(update(_CATALOG).where(_CATALOG.c.folder_id == folder_id, _CATALOG.c.uid == bindparam("u"))
                  .values(flags=bindparam("f")), [{"u": uid, "f": text} for uid, text in flags.items()])
    return _insert_added(s, mailbox_id, plan, by_name)


def _insert_added(s: Session, mailbox_id: int, plan: RebuildPlan, by_name: Mapping[str, int]) -> list[int]:
    """The catalogue rows of ``plan.added`` (``by_name``: folder name -> row id); their ids, in order."""
    return insert_entries(s, [(mailbox_id, by_name[a.folder], a.uid, a.guid, a.sha256, a.size, a.flags)
                              for a in plan.added])
