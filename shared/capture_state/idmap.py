"""The id map of a replica (message id -> folder, UIDVALIDITY, UID and SHA-256 on the server
replayed into) and the DR id aliases: every read and write of ``idmap`` and ``mid_alias``.

:class:`IdMap` is bound to one session and one replica and hands out :class:`MapEntry` values.
The replay engine keeps it current as it writes; failback seeds it from a capture catalogue
(:func:`seed_from_catalog`) and rebuilds the forward one from the DR catalogue
(:func:`rebuild_from_catalog`); a cutover aliases the DR catalogue's ids to the source's
(:func:`alias_catalogued`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Mapping, Sequence

from sqlalchemy import bindparam, case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from mailrepl.shared.model import Cursor
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import CatalogEntry, FolderState, IdMapEntry, MidAlias
from mailrepl.shared.store.row_writes import insert_rows

__all__ = ["MapEntry", "IdMap", "seed_from_catalog", "rebuild_from_catalog", "alias_catalogued", "drop_aliases",
           "aliases"]

ALIAS_CHUNK = 200  # mailboxes per INSERT ... SELECT

_IDMAP = IdMapEntry.__table__
# built once: replay reads and writes the map at every group it applies (Core rows, no ORM objects)
_OF_REPLICA = _IDMAP.c.replica_id == bindparam("rid")
_MIDS = _IDMAP.c.mid.in_(bindparam("mids", expanding=True))
_ENTRIES = select(_IDMAP.c.mid, _IDMAP.c.folder, _IDMAP.c.uidvalidity, _IDMAP.c.uid, _IDMAP.c.sha256).where(
    _OF_REPLICA, _MIDS)
_MAPPED = select(_IDMAP.c.mid).where(_OF_REPLICA, _MIDS)
_DROP = delete(_IDMAP).where(_OF_REPLICA, _MIDS)


@dataclass(frozen=True)
class MapEntry:
    """Where one message is on the server replayed into."""

    mid: int
    folder: str
    uidvalidity: int
    uid: int
    sha256: str

    @classmethod
    def of(cls, e: IdMapEntry) -> "MapEntry":
        return cls(e.mid, e.folder, e.uidvalidity, e.uid, e.sha256)


class IdMap:
    """The id map of replica ``replica_id``, read and written through session ``s``."""

    def __init__(self, s: Session, replica_id: int) -> None:
        self.s = s
        self.rid = replica_id

    # ------------------------------------------------------------------ reads

    def entries(self, mids: Iterable[int]) -> dict[int, MapEntry]:
        out: dict[int, MapEntry] = {}
        for part in chunks(mids):
            for e in self.s.execute(_ENTRIES, {"rid": self.rid, "mids": list(part)}):
                out[e.mid] = MapEntry(e.mid, e.folder, e.uidvalidity, e.uid, e.sha256)
        return out

    def mapped(self, mids: Iterable[int]) -> set[int]:
        """Which of ``mids`` the map holds."""
        out: set[int] = set()
        for part in chunks(mids):
            out.update(self.s.scalars(_MAPPED, {"rid": self.rid, "mids": list(part)}))
        return out

    def all(self) -> dict[int, MapEntry]:
        return {e.mid: MapEntry.of(e) for e in self.s.scalars(select(IdMapEntry).where(IdMapEntry.replica_id == self.rid))}

    def in_folder(self, folder: str) -> list[MapEntry]:
        return [MapEntry.of(e) for e in self.s.scalars(select(IdMapEntry).where(
            IdMapEntry.replica_id == self.rid, IdMapEntry.folder == folder))]

    def shas_at(self, uids_by_folder: Mapping[str, Iterable[int]]) -> dict[tuple[str, int], str]:
        """(folder, uid) -> SHA-256 of the mapped messages at these UIDs (only those: a folder
        of a large mailbox is not read whole to identify the few messages just written)."""
        out: dict[tuple[str, int], str] = {}
        for name, uids in uids_by_folder.items():
            for part in chunks(sorted(set(uids))):
                for uid, sha in self.s.execute(select(IdMapEntry.uid, IdMapEntry.sha256).where(
                        IdMapEntry.replica_id == self.rid, IdMapEntry.folder == name, IdMapEntry.uid.in_(part))):
                    out[(name, uid)] = sha
        return out

    # ------------------------------------------------------------------ writes

    def put(self, entries: Sequence[MapEntry]) -> None:
        """Map these messages, replacing whatever the map had for their ids (set-based)."""
        if not entries:
            return
        self.drop([e.mid for e in entries])
        insert_rows(self.s, IdMapEntry.__table__, ("replica_id", "mid", "folder", "uidvalidity", "uid", "sha256"),
                    [(self.rid, e.mid, e.folder, e.uidvalidity, e.uid, e.sha256) for e in entries])

    def relocate(self, mid: int, folder: str, uidvalidity: int, uid: int) -> None:
        self.s.execute(update(IdMapEntry).where(IdMapEntry.replica_id == self.rid, IdMapEntry.mid == mid)
                       .values(folder=folder, uidvalidity=uidvalidity, uid=uid))

    def drop(self, mids: Iterable[int]) -> None:
        for part in chunks(mids):
            self.s.execute(_DROP, {"rid": self.rid, "mids": list(part)})

    def drop_folder(self, folder: str) -> None:
        """Forget the messages of one folder."""
        self.s.execute(delete(IdMapEntry).where(IdMapEntry.replica_id == self.rid, IdMapEntry.folder == folder))

    def take_folder(self, folder: str) -> list[MapEntry]:
        """Forget the messages of one folder; returns what was forgotten."""
        gone = self.in_folder(folder)
        self.drop_folder(folder)
        return gone

    def rename_folder(self, old: str, new: str) -> None:
        """A folder and its subfolders were renamed."""
        for e in self.s.scalars(select(IdMapEntry).where(IdMapEntry.replica_id == self.rid)):
            if e.folder == old or e.folder.startswith(old + "/"):
                e.folder = new + e.folder[len(old):]

    def clear(self) -> None:
        self.s.execute(delete(IdMapEntry).where(IdMapEntry.replica_id == self.rid))


def seed_from_catalog(s: Session, replica_id: int, mailbox_id: int, skip: Collection[int] = ()) -> int:
    """A reverse replica's id map from the capture catalogue of the same mailbox: every message
    of a folder with a cursor, under the id the catalogue gave it, but those in ``skip``.
    Returns how many were mapped."""
    rows = []
    for cat, name, cursor in s.execute(
        select(CatalogEntry, FolderState.name, FolderState.cursor)
        .join(FolderState, FolderState.id == CatalogEntry.folder_id)
        .where(CatalogEntry.mailbox_id == mailbox_id, FolderState.cursor.is_not(None))
    ):
        if cat.mid in skip:
            continue
        rows.append(dict(replica_id=replica_id, mid=cat.mid, folder=name,
                         uidvalidity=Cursor.parse(cursor).uidvalidity, uid=cat.uid, sha256=cat.sha256))
    for part in chunks(rows, 1000):
        s.execute(IdMapEntry.__table__.insert(), part)
    return len(rows)


def rebuild_from_catalog(s: Session, replica_id: int, mailbox_id: int, id_of: Mapping[int, int]) -> int:
    """The id map of ``replica_id`` rebuilt from the catalogue of ``mailbox_id`` (the copy the
    replica writes into): catalogue id ``c`` becomes map id ``id_of[c]``; catalogued messages
    without one, or in a folder without a cursor, are left out. Returns how many were mapped."""
    folders = {f.id: f for f in s.scalars(select(FolderState).where(FolderState.mailbox_id == mailbox_id))}
    entries = {}
    for c in s.scalars(select(CatalogEntry).where(CatalogEntry.mailbox_id == mailbox_id)):
        key = id_of.get(c.mid)
        f = folders.get(c.folder_id)
        if key is None or f is None or not f.cursor:
            continue
        entries[key] = dict(replica_id=replica_id, mid=key, folder=f.name,
                            uidvalidity=Cursor.parse(f.cursor).uidvalidity, uid=c.uid, sha256=c.sha256)
    s.execute(delete(IdMapEntry).where(IdMapEntry.replica_id == replica_id))
    if entries:
        s.execute(insert(IdMapEntry.__table__), list(entries.values()))
    return len(entries)


def aliases(s: Session, mailbox_id: int, dr_mids: Iterable[int] | None = None) -> dict[int, int]:
    """DR id -> source id of the mailbox's aliased messages (all, or those of ``dr_mids``)."""
    q = select(MidAlias.dr_mid, MidAlias.source_mid).where(MidAlias.mailbox_id == mailbox_id)
    if dr_mids is None:
        return dict(s.execute(q).all())
    out: dict[int, int] = {}
    for part in chunks(sorted(set(dr_mids))):
        out.update(s.execute(q.where(MidAlias.dr_mid.in_(part))).all())
    return out


def drop_aliases(s: Session, mailbox_id: int) -> None:
    s.execute(delete(MidAlias).where(MidAlias.mailbox_id == mailbox_id))


def alias_catalogued(s: Session, pairs: Sequence[tuple[int, int]]) -> None:
    """For each (mailbox id, replica id): every catalogued message of the mailbox aliased to the
    id the replica's map has at the same folder and UID (one INSERT ... SELECT per chunk)."""
    for part in chunks(pairs, ALIAS_CHUNK):
        mbx_ids = [m for m, _ in part]
        s.execute(delete(MidAlias).where(MidAlias.mailbox_id.in_(mbx_ids)))
        owner = case({m: r for m, r in part}, value=CatalogEntry.mailbox_id)
        rows = (select(CatalogEntry.mailbox_id, CatalogEntry.mid, func.min(IdMapEntry.mid))
                .join(FolderState, FolderState.id == CatalogEntry.folder_id)
                .join(IdMapEntry, (IdMapEntry.replica_id == owner) & (IdMapEntry.folder == FolderState.name)
                      & (IdMapEntry.uid == CatalogEntry.uid))
                .where(CatalogEntry.mailbox_id.in_(mbx_ids))
                .group_by(CatalogEntry.mailbox_id, CatalogEntry.mid))
        s.execute(insert(MidAlias).from_select(["mailbox_id", "dr_mid", "source_mid"], rows))
