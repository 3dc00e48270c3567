"""Folder deletes that keep what this side's id map does not know.

A replay target may hold messages the other side never had: during failback, the primary holds
mail delivered after the cutover point, which the standby never saw. When the other side deleted
such a folder, deleting it here would delete that mail too. With ``keep_unknown`` the replay
engine asks :func:`plan_delete` first; the folder is kept when it holds messages the id map does
not know, or subfolders that are still there (kept themselves, or never known to the other
side). Only the known messages are expunged from a kept folder.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.errors import FolderNotFound
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import IdMapEntry, Orphan

__all__ = ["KeptFolder", "plan_delete"]


@dataclass(frozen=True)
class KeptFolder:
    folder: str
    known: list[int]  # UIDs to expunge: the messages the other side deleted with the folder
    unknown: list[int]  # UIDs kept
    subfolders: list[str]  # still there, so the folder stays as their parent

    def record(self) -> dict:
        out = dict(folder=self.folder, messages=len(self.unknown))
        if self.subfolders:
            out["subfolders"] = self.subfolders
        return out


def plan_delete(store: Store, rid: int, folder: str, session: MailboxSession) -> KeptFolder | None:
    """What to keep of ``folder``; None if nothing (or the folder is gone): delete it as usual."""
    try:
        delta = session.changes_since(folder, None)
    except FolderNotFound:
        return None
    prefix = folder + "/"
    subfolders = sorted(f.name for f in session.list_folders() if f.name.startswith(prefix))
    uv = delta.cursor.uidvalidity
    with store.read() as s:
        known = {
            uid
            for model in (IdMapEntry, Orphan)
            for uid in s.scalars(
                select(model.uid).where(model.replica_id == rid, model.folder == folder, model.uidvalidity == uv)
            )
        }
    present = [m.uid for m in delta.new]
    unknown = [u for u in present if u not in known]
    if not unknown and not subfolders:
        return None
    return KeptFolder(folder, [u for u in present if u in known], unknown, subfolders)
