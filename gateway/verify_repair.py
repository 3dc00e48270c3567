"""``verify --repair``: have replication fix what a verify found, through the engines.

For each folder pair with message differences, the standby copies the primary lacks (``extra``,
``duplicate``, the copy of an ``internal_date`` difference) are queued at the recovery gateway
for removal, then the capture engine resyncs the primary's folder (a folder reset: the standby
keeps each copy equal in everything but flags and gets the flags, gets again what it lacks or
holds otherwise, and loses the orphans). Nothing here writes a server.

Folder differences are not repaired: replication never deletes or renames a standby folder it
did not create itself; they are listed with the reason (``not_repaired``).
"""
from __future__ import annotations

from typing import Callable, Iterable

from mailrepl.gateway.verify import MailboxReport
from mailrepl.shared.protocol.peer_client import PeerClient

__all__ = ["Repairer", "REMOVED_KINDS"]

REMOVED_KINDS = ("extra", "duplicate", "internal_date")  # the standby's copy goes (re-added where needed)
FOLDER_KINDS = ("folder_missing", "folder_extra")


class Repairer:
    """``request_resync(mailbox_id, folders)`` is the capture engine's; ``wake_capture`` starts cycles now."""

    def __init__(self, peer: PeerClient, request_resync: Callable[[int, Iterable[str]], None],
                 wake_capture: Callable[[], None] = lambda: None) -> None:
        self.peer = peer
        self.request_resync = request_resync
        self.wake_capture = wake_capture

    def repair(self, report: MailboxReport) -> dict:
        resync: set[str] = set()
        removals: dict[str, list[tuple[int, str]]] = {}
        not_repaired = []
        for d in report.differences:
            if d.kind in FOLDER_KINDS:
                not_repaired.append(dict(kind=d.kind, folder=d.folder, standby_folder=d.standby_folder,
                                         reason="replication does not delete or rename a standby folder it did not "
                                                "create: rename or remove it on the standby"))
                continue
            resync.add(d.folder)
            if d.kind in REMOVED_KINDS and d.standby_uid is not None and d.sha256 and d.standby_folder:
                removals.setdefault(d.standby_folder, []).append((d.standby_uid, d.sha256))
        queued = 0
        if removals:
            queued = self.peer.verify_remove(report.server, report.address, [
                dict(folder=f, uidvalidity=report.standby_uidvalidity[f], messages=sorted(set(msgs)))
                for f, msgs in sorted(removals.items()) if f in report.standby_uidvalidity])
        if resync and report.mailbox_id is not None:
            self.request_resync(report.mailbox_id, resync)
            self.wake_capture()
        return dict(resynced_folders=sorted(resync), removals_queued=queued, not_repaired=not_repaired)
