"""The folders a replica's copy must have, as the applied changes say: every read and write of
``replica_folder``.

The id map names only the folders that hold replayed messages; an empty folder (just created,
or emptied) leaves no trace in it. This record names every folder the source has told the
replayer about, as of the applied sequence number: created (with the special use it was
created with), renamed (with its subfolders), reset, written into (an add or a move creates a
missing folder); forgotten when deleted (that folder alone: a subfolder the source still has
stays, and a deleted one comes with a delete of its own). A folder of this record missing
on the server means someone else removed it (a wipe or a restore on that server), whenever that
happened relative to replay, and the special use it is recorded with is the one it gets back.
"""
from __future__ import annotations

from collections.abc import Iterable

from mailrepl.shared.model import Change, Kind
from mailrepl.shared.store.models import ReplicaFolder
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

__all__ = ["ReplicaFolders"]

_WRITES_INTO = (Kind.MSG_ADD, Kind.MSG_REPLACE, Kind.FOLDER_RESET)


class ReplicaFolders:
    """The folder record of replica ``replica_id``, read and written through session ``s``."""

    def __init__(self, s: Session, replica_id: int) -> None:
        self.s = s
        self.rid = replica_id

    def names(self) -> set[str]:
        return set(self.s.scalars(select(ReplicaFolder.name).where(ReplicaFolder.replica_id == self.rid)))

    def special_use(self, name: str) -> frozenset[str]:
        row = self.s.get(ReplicaFolder, (self.rid, name))
        return frozenset(row.special_use.split()) if row is not None and row.special_use else frozenset()

    def applied(self, changes: Iterable[Change]) -> None:
        """What these changes, just applied in this order, say about the copy's folders."""
        for ch in changes:
            if ch.kind == Kind.FOLDER_CREATE:
                self._note(ch.folder, " ".join(ch.special_use or ()) or None)
            elif ch.kind in _WRITES_INTO:
                self._note(ch.folder)
            elif ch.kind == Kind.MSG_MOVE:
                self._note(ch.new_folder)
            elif ch.kind == Kind.FOLDER_RENAME:
                self._rename(ch.folder, ch.new_folder)
            elif ch.kind == Kind.FOLDER_DELETE:  # that folder alone: its subfolders, if any
                self._forget_one(ch.folder)     # are still there (the source sends their own deletes)

    def replace(self, names: Iterable[str]) -> None:
        """The copy's folders are these now (re-based from a listing of it)."""
        names = set(names)
        self.s.execute(delete(ReplicaFolder).where(ReplicaFolder.replica_id == self.rid))
        if names:
            self.s.execute(insert(ReplicaFolder), [dict(replica_id=self.rid, name=name) for name in names])

    def _note(self, name: str, special_use: str | None = None) -> None:
        row = self.s.get(ReplicaFolder, (self.rid, name))
        if row is None:
            self.s.add(ReplicaFolder(replica_id=self.rid, name=name, special_use=special_use))
            self.s.flush()
        elif special_use is not None and row.special_use != special_use:
            row.special_use = special_use

    def _subtree(self, name: str) -> list[ReplicaFolder]:
        return [r for r in self.s.scalars(select(ReplicaFolder).where(ReplicaFolder.replica_id == self.rid))
                if r.name == name or r.name.startswith(name + "/")]

    def _forget(self, name: str) -> None:
        for row in self._subtree(name):
            self.s.delete(row)
        self.s.flush()

    def _forget_one(self, name: str) -> None:
        row = self.s.get(ReplicaFolder, (self.rid, name))
        if row is not None:
            self.s.delete(row)
            self.s.flush()

    def _rename(self, old: str, new: str) -> None:
        moved = [(new + r.name[len(old):], r.special_use) for r in self._subtree(old)]
        self._forget(old)
        self._forget(new)
        for name, use in moved:
            self.s.add(ReplicaFolder(replica_id=self.rid, name=name, special_use=use))
        if not moved:  # renamed before the record knew it: the new name is a folder all the same
            self.s.add(ReplicaFolder(replica_id=self.rid, name=new))
        self.s.flush()
