"""Finding a standby copy changed behind the replayer's back, and asking for its resync.

While a mailbox replicates, only the replayer writes its standby copy, so the id map (every
message written, by folder, UIDVALIDITY and UID), the replica's folder record (every folder the
applied changes say the copy has, empty ones included: ``capture_state.replica_folders``) and
the standby view (the folders as the replayer left them) describe the copy exactly. A folder the
id map has messages in that is gone, has another UIDVALIDITY or holds, by the id map, a UID it
has not given yet (recreated with its old UIDVALIDITY); a folder of the record that is gone; or,
when the view matches everything applied, a folder of the view that is gone or was recreated,
means someone else changed the copy: a mailbox or folder wiped or restored on the standby.
Nothing written there can be trusted to be where the id map says.

The record does not depend on when the damage happened: the view is rebuilt from the copy as it
is after each pass, so a folder removed while a pass ran (after it was created or reset, before
the pass ended) is missing from the view too, and an empty folder has nothing in the id map.

The repair is a resync from the primary, which holds the truth: the recovery gateway lists the
mailbox in its answer to ``GET /api/v1/ingest/sites`` (``resync``, with a token), the source
gateway resets the capture of every folder of that mailbox (``FOLDER_RESET`` … adds …
``FOLDER_RESET_DONE``), and replay keeps what the standby still holds of it (same bytes, same
internal date, in a folder of the same UIDVALIDITY), writes the rest again and removes what
should not be there. Bodies do not cross the WAN again: the recovery gateway still holds them.

A request stays until a folder reset of the source later than the request has been applied (the
pass that applied it checks the copy again: damaged anew while it ran, it is asked for again);
it is kept in memory (a restart finds the damage again from the id map and the folder record).
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence

from sqlalchemy import func, select

from mailrepl.shared.adapters.base import FolderInfo
from mailrepl.shared.capture_state import KnownFolder, ReplicaFolders, known_folders, pair_folders
from mailrepl.shared.model import Change, Kind
from mailrepl.shared.store.models import IdMapEntry, InboxRow, Mailbox, Replica

__all__ = ["ResyncRequests", "standby_damage"]

log = logging.getLogger("mailrepl.standby_check")


def standby_damage(s, rid: int, live: Sequence[FolderInfo], *, view_fresh: bool, use_fid: bool,
                   known: Sequence[KnownFolder] | None = None, applied: int | None = None) -> list[str]:
    """Folders of replica ``rid``'s standby copy changed by someone else (sorted; empty: none).
    ``known``: the view's folders and ``applied``: the replica's applied sequence number, when
    the caller has just read them in ``s``."""
    by_name = {f.name: f for f in live}
    # a folder gone, or of another UIDVALIDITY; or holding, by the id map, a UID the server has not
    # given yet: recreated with its old UIDVALIDITY (taken from the clock, its record wiped too)
    damaged = {folder for folder, uv, top in s.execute(
        select(IdMapEntry.folder, IdMapEntry.uidvalidity, func.max(IdMapEntry.uid))
        .where(IdMapEntry.replica_id == rid).group_by(IdMapEntry.folder, IdMapEntry.uidvalidity))
        if (f := by_name.get(folder)) is None or f.uidvalidity != uv or 0 < f.uidnext <= top}
    # a folder the applied changes say the copy has (empty ones included) that is gone
    damaged |= ReplicaFolders(s, rid).names() - by_name.keys()
    if view_fresh:
        if known is None:
            rep = s.get(Replica, rid)
            mbx_id = s.scalar(select(Mailbox.id).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
            known = known_folders(s, mbx_id) if mbx_id is not None else []
        if known:
            matches, deleted = pair_folders(known, live, use_fid)
            damaged |= {k.name for k in deleted}
            damaged |= {m.known.name for m in matches if m.identity_changed}
    # the next change to apply may be done on the server already (the process stopped before its
    # bookkeeping): a folder it renames or deletes, and their subfolders, may be gone by right
    if not damaged:
        return []
    gone = _maybe_gone(s, rid, applied)
    return sorted(f for f in damaged if gone is None or not (f == gone or f.startswith(gone + "/")))


def _maybe_gone(s, rid: int, applied: int | None) -> str | None:
    if applied is None:
        applied = s.get(Replica, rid).applied_seq
    text = s.scalar(select(InboxRow.change).where(InboxRow.replica_id == rid, InboxRow.seq == applied + 1))
    if text is None:
        return None
    ch = Change.from_dict(json.loads(text))
    return ch.folder if ch.kind in (Kind.FOLDER_RENAME, Kind.FOLDER_DELETE) else None


class ResyncRequests:
    """Mailboxes whose standby copy needs a resync from the primary: replica id -> token (the
    received sequence number when the damage was found). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: dict[int, tuple[str, str, str, int]] = {}  # rid -> (source, server, address, token)

    def want(self, rep: Replica, folders: Sequence[str]) -> None:
        with self._lock:
            if rep.id in self._wanted:
                return
            self._wanted[rep.id] = (rep.source_id, rep.server, rep.address, rep.received_seq)
        log.warning("%s/%s: the standby copy was changed behind the gateways' back (%s): asking the source "
                    "for a resync", rep.server, rep.address, ", ".join(folders[:5]) + (" ..." if len(folders) > 5 else ""))

    def reset_applied(self, rid: int, reset_seq: int) -> None:
        """A folder reset of the source at ``reset_seq`` was applied: a request older than it is answered."""
        with self._lock:
            wanted = self._wanted.get(rid)
            if wanted is not None and reset_seq > wanted[3]:
                del self._wanted[rid]

    def pending(self, rid: int) -> bool:
        with self._lock:
            return rid in self._wanted

    def for_source(self, source: str) -> list[dict]:
        with self._lock:
            return [dict(server=server, address=address, token=token)
                    for src, server, address, token in self._wanted.values() if src == source]
