"""Folder cursors and the catalogue of one mailbox copy: every read and write of ``folder_state``
and ``catalog`` the engines make, in the caller's transaction.

:class:`CaptureState` is bound to one session and one mailbox. Its writes are intents (a folder
created, renamed, reset, deleted; catalogued messages moved, expunged, re-flagged; pending
capture work set, shrunk, finished); the caller emits the outbox rows that go with them in the
same transaction, so the cursor advance and the changes commit together. Reads hand out
:class:`CatalogRow` values, never live ORM rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from mailrepl.shared.adapters.base import FolderInfo
from mailrepl.shared.capture_state.pairing import KnownFolder
from mailrepl.shared.model import Cursor, UidSet, flags_text
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import CatalogEntry, FolderState
from mailrepl.shared.store.row_writes import insert_rows_with_ids

__all__ = ["CaptureState", "CatalogRow", "NewEntry", "PendingWork", "insert_entries", "known_folders",
           "pending_folders", "placeholder_name", "set_flags"]

_CATALOG = CatalogEntry.__table__


_ENTRY_COLUMNS = ("mailbox_id", "folder_id", "uid", "guid", "sha256", "size", "flags")


def insert_entries(s: Session, rows: Sequence[tuple]) -> list[int]:
    """Catalogue rows (tuples of ``_ENTRY_COLUMNS``: mailbox id, folder id, uid, guid, sha256,
    size, flags text) in one multi-row insert; returns the message ids given to them, in order.
    The folders they go to, created in this transaction, are flushed first."""
    return insert_rows_with_ids(s, _CATALOG, "mid", _ENTRY_COLUMNS, rows)


def placeholder_name(folder_id: int) -> str:
    """A name a folder holds for a moment, inside one transaction, while names are handed round
    (no folder name has a control character; PostgreSQL text cannot hold NUL)."""
    return f"\x01folder-{folder_id}"


def set_flags(s: Session, flags_by_mid: Sequence[tuple[int, str]]) -> None:
    """New flags (flags_text) of catalogued messages, in one executemany."""
    if flags_by_mid:
        s.execute(update(_CATALOG).where(_CATALOG.c.mid == bindparam("m")).values(flags=bindparam("f")),
                  [{"m": mid, "f": text} for mid, text in flags_by_mid])


@dataclass(frozen=True)
class CatalogRow:
    """What the catalogue knows of one message (a ``catalog`` row, read)."""

    mid: int
    folder_id: int
    uid: int
    guid: str | None
    sha256: str
    size: int
    flags: str  # flags_text

    @classmethod
    def of(cls, c: CatalogEntry) -> "CatalogRow":
        return cls(c.mid, c.folder_id, c.uid, c.guid, c.sha256, c.size, c.flags)


@dataclass(frozen=True)
class NewEntry:
    """A message to catalogue: it gets a new message id."""

    uid: int
    guid: str | None
    sha256: str
    size: int
    flags: str  # flags_text


@dataclass(frozen=True)
class PendingWork:
    """New messages of a folder still to capture (and the draft edits among them)."""

    name: str
    uids: UidSet
    replace: dict[int, int]  # new uid -> mid of the draft it replaces


_FOLDER = FolderState.__table__
# built once: capture reads it at every cycle (a Core row per folder, no ORM objects)
_KNOWN_QUERY = select(_FOLDER.c.id, _FOLDER.c.name, _FOLDER.c.fid, _FOLDER.c.cursor, _FOLDER.c.pending_uids).where(
    _FOLDER.c.mailbox_id == bindparam("mailbox_id"))


def known_folders(s: Session, mailbox_id: int) -> list[KnownFolder]:
    return [_known(f) for f in s.execute(_KNOWN_QUERY, {"mailbox_id": mailbox_id})]


_COUNTED_QUERY = select(_FOLDER.c.id, _FOLDER.c.name, _FOLDER.c.fid, _FOLDER.c.cursor, _FOLDER.c.pending_uids,
                        _FOLDER.c.messages).where(_FOLDER.c.mailbox_id == bindparam("mailbox_id"))


def known_folders_counted(s: Session, mailbox_id: int) -> tuple[list[KnownFolder], dict[int, int | None]]:
    """``known_folders`` and each folder row's message count, in one query."""
    rows = list(s.execute(_COUNTED_QUERY, {"mailbox_id": mailbox_id}))
    return [_known(f) for f in rows], {f.id: f.messages for f in rows}


def pending_folders(s: Session, mailbox_id: int) -> list[int]:
    """Ids of the folders with capture work left over from an earlier cycle."""
    return list(s.scalars(select(FolderState.id).where(
        FolderState.mailbox_id == mailbox_id, FolderState.pending_uids.is_not(None))))


def _known(f) -> KnownFolder:
    """A ``folder_state`` row (ORM object or Core row) as a :class:`KnownFolder`."""
    return KnownFolder(f.id, f.name, f.fid, Cursor.parse(f.cursor) if f.cursor else None,
                       UidSet.parse(f.pending_uids) if f.pending_uids is not None else None)


def _replace_text(replace: Mapping[int, int]) -> str | None:
    return json.dumps({str(k): v for k, v in replace.items()}) if replace else None


class CaptureState:
    """The capture state of mailbox ``mailbox_id``, read and written through session ``s``."""

    def __init__(self, s: Session, mailbox_id: int) -> None:
        self.s = s
        self.mailbox_id = mailbox_id
        self._rows: dict[int, FolderState] | None = None

    # ------------------------------------------------------------------ folders

    @property
    def rows(self) -> dict[int, FolderState]:
        if self._rows is None:
            self._rows = {f.id: f for f in self.s.scalars(
                select(FolderState).where(FolderState.mailbox_id == self.mailbox_id))}
        return self._rows

    def folder_name(self, folder_id: int) -> str | None:
        row = self.rows.get(folder_id)
        return row.name if row is not None else None

    def create_folder(self, info: FolderInfo) -> int:
        row = FolderState(mailbox_id=self.mailbox_id, name=info.name, fid=info.fid)
        self.s.add(row)
        self.s.flush()
        self.rows[row.id] = row
        return row.id

    def rename_folder(self, old: str, new: str) -> None:
        """Folder ``old`` and its subfolders are renamed to ``new`` (as the server renames them),
        written now. The names they take are free (``folder_order`` sees to it); they pass
        through placeholders first, so that no statement meets a name one of them still holds."""
        moved = {row: new + row.name[len(old):] for row in self.rows.values()
                 if row.name == old or row.name.startswith(old + "/")}
        if len(moved) > 1:
            for row in moved:
                row.name = placeholder_name(row.id)
            self.s.flush()
        for row, name in moved.items():
            row.name = name
        self.s.flush()

    def folder_names(self) -> dict[int, str]:
        """Every known folder of the mailbox: id -> name."""
        return {folder_id: row.name for folder_id, row in self.rows.items()}

    def note_folder(self, folder_id: int, info: FolderInfo) -> None:
        """What the listing says of a folder: its id (kept if the server gives none) and size."""
        row = self.rows[folder_id]
        row.fid = info.fid or row.fid
        row.messages = info.messages

    def reset_folder(self, folder_id: int) -> None:
        """The folder was replaced: its catalogue goes, capture reads it again from nothing (work
        pending from an earlier cycle included)."""
        self.s.execute(delete(CatalogEntry).where(CatalogEntry.folder_id == folder_id))
        row = self.rows[folder_id]
        row.resetting = True
        row.cursor = None
        row.pending_cursor = row.pending_uids = row.pending_replace = None

    def delete_folder(self, folder_id: int) -> None:
        """The folder and the catalogue rows still in it (those moved out were moved first)."""
        self.s.flush()
        self.s.delete(self.rows.pop(folder_id))

    def set_pending(self, folder_id: int, cursor: Cursor, uids: Iterable[int], replace: Mapping[int, int]) -> None:
        row = self.rows[folder_id]
        row.pending_cursor = cursor.format()
        row.pending_uids = UidSet(uids).format()
        row.pending_replace = _replace_text(replace)

    def advance(self, folder_id: int, cursor: Cursor) -> bool:
        """Nothing pending: the cursor moves to ``cursor``. True if that ends a folder reset."""
        row = self.rows[folder_id]
        row.cursor = cursor.format()
        was, row.resetting = row.resetting, False
        return was

    def pending_work(self, folder_id: int) -> PendingWork | None:
        row = self.s.get(FolderState, folder_id)
        if row is None or row.pending_uids is None:
            return None
        replace = {int(k): v for k, v in json.loads(row.pending_replace or "{}").items()}
        return PendingWork(row.name, UidSet.parse(row.pending_uids), replace)

    def shrink_pending(self, folder_id: int, remaining: UidSet, replace: Mapping[int, int]) -> None:
        row = self.s.get(FolderState, folder_id)
        row.pending_uids = remaining.format()
        row.pending_replace = _replace_text(replace)

    def finish_pending(self, folder_id: int) -> bool:
        """The folder's pending work is captured: its cursor becomes the pending target. True if
        that ends a folder reset."""
        row = self.s.get(FolderState, folder_id)
        row.cursor, row.pending_cursor, row.pending_uids, row.pending_replace = row.pending_cursor, None, None, None
        was, row.resetting = row.resetting, False
        return was

    # ------------------------------------------------------------------ catalogue

    def entries_at(self, folder_id: int, uids: Iterable[int]) -> list[CatalogRow]:
        out: list[CatalogRow] = []
        for part in chunks(uids):
            out += [CatalogRow.of(c) for c in self.s.scalars(select(CatalogEntry).where(
                CatalogEntry.folder_id == folder_id, CatalogEntry.uid.in_(part)))]
        return out

    def entries_in(self, folder_id: int) -> list[CatalogRow]:
        return [CatalogRow.of(c) for c in self.s.scalars(select(CatalogEntry).where(CatalogEntry.folder_id == folder_id))]

    def add_entries(self, folder_id: int, entries: Sequence[NewEntry]) -> list[int]:
        """Catalogue new messages; returns their message ids, in order."""
        return insert_entries(self.s, [(self.mailbox_id, folder_id, e.uid, e.guid, e.sha256, e.size, e.flags)
                                       for e in entries])

    def move_entry(self, mid: int, folder_id: int, uid: int, flags: Iterable[str]) -> None:
        cat = self.s.get(CatalogEntry, mid)
        cat.folder_id, cat.uid, cat.flags = folder_id, uid, flags_text(flags)

    def drop_entry(self, mid: int) -> bool:
        """Forget one message; False if it was not catalogued."""
        cat = self.s.get(CatalogEntry, mid)
        if cat is None:
            return False
        self.s.delete(cat)
        return True

    def expunge_at(self, folder_id: int, uids: Iterable[int], spare: set[int] = frozenset()) -> list[int]:
        """Forget the messages at ``uids`` of a folder, except ids in ``spare``; returns the ids
        forgotten, in catalogue order."""
        gone: list[int] = []
        for part in chunks(uids):
            for cat in self.s.scalars(select(CatalogEntry).where(
                    CatalogEntry.folder_id == folder_id, CatalogEntry.uid.in_(part))).all():
                if cat.mid in spare:
                    continue
                gone.append(cat.mid)
                self.s.delete(cat)
        return gone

    def update_flags(self, folder_id: int, flags_by_uid: Mapping[int, Iterable[str]]) -> list[tuple[int, str]]:
        """Store new flags of messages of a folder; returns (mid, flags_text) of those that changed."""
        changed: list[tuple[int, str]] = []
        self.s.flush()  # rows moved or added in this transaction are read as they are now
        for part in chunks(sorted(flags_by_uid)):
            for mid, uid, old in self.s.execute(select(_CATALOG.c.mid, _CATALOG.c.uid, _CATALOG.c.flags).where(
                    _CATALOG.c.folder_id == folder_id, _CATALOG.c.uid.in_(part))):
                text = flags_text(flags_by_uid[uid])
                if text != old:
                    changed.append((mid, text))
        set_flags(self.s, changed)
        return changed

    def flush(self) -> None:
        self.s.flush()

    # ------------------------------------------------------------------ whole copies

    def forget(self) -> None:
        """Drop the whole capture state of the mailbox (a full resync starts from nothing)."""
        self.s.execute(delete(CatalogEntry).where(CatalogEntry.mailbox_id == self.mailbox_id))
        self.s.execute(delete(FolderState).where(FolderState.mailbox_id == self.mailbox_id))
        self._rows = None

    def catalog(self) -> list[tuple[CatalogRow, str, Cursor | None]]:
        """Every catalogued message with its folder's name and cursor."""
        return [(CatalogRow.of(c), name, Cursor.parse(cursor) if cursor else None)
                for c, name, cursor in self.s.execute(
                    select(CatalogEntry, FolderState.name, FolderState.cursor)
                    .join(FolderState, FolderState.id == CatalogEntry.folder_id)
                    .where(CatalogEntry.mailbox_id == self.mailbox_id))]
