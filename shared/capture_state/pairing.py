"""Folder pairing: which folder the capture state knows is which live folder (pure; no I/O).

A live folder is the known folder with the same id where the server gives folder ids (Cyrus
OBJECTID, EWS folder ids), else the one with the same name. A folder recreated under a known
name (a new id, while the known id is no longer live) is the known folder too, with its
identity changed: its messages are read again in full. So is a folder whose UIDVALIDITY
changed. Known folders no live folder pairs with were deleted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mailrepl.shared.adapters.base import FolderInfo
from mailrepl.shared.model import Cursor, UidSet

__all__ = ["KnownFolder", "FolderMatch", "pair_folders"]


@dataclass(frozen=True)
class KnownFolder:
    """A folder as the capture state knows it (a ``folder_state`` row, read)."""

    id: int
    name: str
    fid: str = ""
    cursor: Cursor | None = None
    pending_uids: UidSet | None = None  # capture work of an earlier cycle still waiting in it

    @property
    def pending(self) -> bool:
        return self.pending_uids is not None


@dataclass(frozen=True)
class FolderMatch:
    """A live folder and the known folder it pairs with (None: new)."""

    info: FolderInfo
    known: KnownFolder | None

    @property
    def identity_changed(self) -> bool:
        """The known folder was replaced: another folder id, or another UIDVALIDITY."""
        k = self.known
        if k is None:
            return False
        if k.fid and self.info.fid and k.fid != self.info.fid:
            return True
        return k.cursor is not None and k.cursor.uidvalidity != self.info.uidvalidity


def pair_folders(known: Sequence[KnownFolder], live: Sequence[FolderInfo],
                 use_fid: bool) -> tuple[list[FolderMatch], list[KnownFolder]]:
    """Pair ``live`` folders (in their order) with ``known`` ones; returns the matches and the
    known folders that were deleted. Each known folder pairs with at most one live folder."""
    by_fid = {k.fid: k for k in known if k.fid} if use_fid else {}
    by_name = {k.name: k for k in known}
    live_fids = {i.fid for i in live}
    matched: set[int] = set()
    out: list[FolderMatch] = []
    for info in live:
        row = by_fid.get(info.fid) if use_fid and info.fid else by_name.get(info.name)
        if row is None and use_fid and info.fid:
            old = by_name.get(info.name)
            if old is not None and old.fid not in live_fids:
                row = old  # recreated under the same name
        if row is not None and row.id in matched:
            row = None
        if row is not None:
            matched.add(row.id)
        out.append(FolderMatch(info, row))
    return out, [k for k in known if k.id not in matched]
