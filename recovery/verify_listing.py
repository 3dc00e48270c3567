"""Verify, the standby side: the recovery gateway lists a standby copy for its source gateway.

``POST /api/v1/ingest/verify`` (a source, for its own mailboxes only: ``source_access``) answers
every folder of the standby copy with its status now, the name the standby view knows it by
(folders are paired the way the view pairs them: by folder id where the server gives one, else
by name), the view's cursor and the digest of what the view catalogued in it (the cheap first
pass), and, for the folders asked for, every message: SHA-256 of its bytes, flags, internal
date and the replication id the id map gives it. It also says how far this mailbox was received
and applied, so the source can tell changes in flight from differences.

``POST /api/v1/ingest/verify-remove`` (``--repair``) queues standby copies the primary lacks
for removal: they become orphans of their folder (``orphan`` rows, as the replay engine makes
of a reset folder's messages), which the replay engine removes when the source's resync of the
folder is done, unless a re-add claims one as the same message.

It reads the standby through the recovery gateway's own adapter and never writes it; it does not
take the mailbox's replay lock (a listing may take long): what replay writes meanwhile shows as
in flight, and the source checks again.
"""
from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select

from mailrepl.recovery.source_access import SourceAccess
from mailrepl.recovery.standby_view import is_fresh
from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.capture_state import IdMap, known_folders, pair_folders
from mailrepl.shared.engines.verify_compare import summary_digest
from mailrepl.shared.engines.verify_listing import list_folder
from mailrepl.shared.errors import AdapterError
from mailrepl.shared.protocol.messages import (
    VerifyAnswer, VerifyEntry, VerifyFolder, VerifyRemoval, VerifyRemoveAnswer, VerifyRemoveRequest, VerifyRequest,
)
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.principals import Principal
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import AlteredMessage, CatalogEntry, Mailbox, Orphan, Replica

__all__ = ["StandbyListing", "verify_ingest_router"]


class StandbyListing:
    """Lists standby copies; ``open_standby(replica)`` opens a session on one."""

    def __init__(self, store: Store, open_standby: Callable[[Replica], MailboxSession]) -> None:
        self.store = store
        self.open_standby = open_standby

    def answer(self, source: str, server: str, address: str, folders: list[str]) -> VerifyAnswer:
        with self.store.read() as s:
            rep = s.scalar(select(Replica).where(Replica.source_id == source, Replica.server == server,
                                                 Replica.address == address))
            if rep is None:
                raise LookupError(f"mailbox {address!r} of {server!r} is not replicated here")
            s.expunge(rep)
            view = s.scalar(select(Mailbox.id).where(Mailbox.server == server, Mailbox.address == address))
            known = known_folders(s, view) if view is not None else []
            digests: dict[int, list[tuple[str, str]]] = {k.id: [] for k in known}
            if view is not None:
                for folder_id, sha, flags in s.execute(select(CatalogEntry.folder_id, CatalogEntry.sha256,
                                                              CatalogEntry.flags).where(CatalogEntry.mailbox_id == view)):
                    digests.setdefault(folder_id, []).append((sha, flags))
        session = self.open_standby(rep)
        try:
            live = session.list_folders()
            matches, _ = pair_folders(known, live, session.features.folder_id)
            wanted = set(folders)
            out = []
            for m in matches:
                k, info = m.known, m.info
                listed = None
                if info.name in wanted:
                    listed = self._list(rep.id, session, info.name, info.uidvalidity)
                out.append(VerifyFolder(
                    name=info.name, messages=info.messages, uidvalidity=info.uidvalidity, uidnext=info.uidnext,
                    highestmodseq=info.highestmodseq, known_as=k.name if k is not None else None,
                    view_cursor=k.cursor.format() if k is not None and k.cursor is not None else None,
                    view_digest=summary_digest(digests.get(k.id, [])) if k is not None and not k.pending else None,
                    messages_listed=listed))
        finally:
            session.close()
        with self.store.read() as s:
            rep = s.get(Replica, rep.id)
            return VerifyAnswer(folders=out, received_seq=rep.received_seq, applied_seq=rep.applied_seq,
                                view_fresh=is_fresh(rep))

    def queue_removal(self, source: str, server: str, address: str, folders: list[VerifyRemoval]) -> int:
        """Orphan these standby copies (those the id map or an orphan row already holds are left
        as they are: a reset orphans them anyway); how many were queued."""
        queued = 0
        with self.store.tx() as s:
            rid = s.scalar(select(Replica.id).where(Replica.source_id == source, Replica.server == server,
                                                    Replica.address == address))
            if rid is None:
                raise LookupError(f"mailbox {address!r} of {server!r} is not replicated here")
            for f in folders:
                known = {e.uid for e in IdMap(s, rid).in_folder(f.folder) if e.uidvalidity == f.uidvalidity}
                known |= set(s.scalars(select(Orphan.uid).where(Orphan.replica_id == rid, Orphan.folder == f.folder,
                                                                Orphan.uidvalidity == f.uidvalidity)))
                for uid, sha in f.messages:
                    if uid in known:
                        continue
                    known.add(uid)
                    s.add(Orphan(replica_id=rid, folder=f.folder, uidvalidity=f.uidvalidity, uid=uid, sha256=sha))
                    queued += 1
        return queued

    def _list(self, rid: int, session: MailboxSession, folder: str, uidvalidity: int) -> list[VerifyEntry] | None:
        with self.store.read() as s:
            mid_of = {e.uid: e.mid for e in IdMap(s, rid).in_folder(folder) if e.uidvalidity == uidvalidity}
            # messages the standby stored altered (reported as such): listed as what was sent
            sent_as = {(mid, standby): sent for mid, standby, sent in s.execute(
                select(AlteredMessage.mid, AlteredMessage.standby_sha256, AlteredMessage.sha256)
                .where(AlteredMessage.replica_id == rid))}
        listed = list_folder(session, folder, mid_of)
        if listed is None:
            return None
        return [VerifyEntry(uid=m.uid, sha256=sent_as.get((m.mid, m.sha256), m.sha256), flags=sorted(m.flags),
                            internaldate=m.internaldate, mid=m.mid, message_id=m.message_id) for m in listed]


def verify_ingest_router(access: SourceAccess, listing: StandbyListing) -> APIRouter:
    r = APIRouter(prefix="/api/v1/ingest", tags=["ingest"], responses=ERROR_RESPONSES)
    as_source = access.dependency()

    @r.post("/verify", response_model=VerifyAnswer)
    def verify(body: VerifyRequest, caller: Principal = Depends(as_source)) -> VerifyAnswer:
        """The standby copy of one mailbox of this source, listed (see the module docstring)."""
        access.check_mailboxes(caller, body.source, [(body.server, body.address)])
        try:
            return listing.answer(body.source, body.server, body.address, list(body.folders))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except AdapterError as exc:
            raise HTTPException(503, f"cannot read the standby copy: {exc.__class__.__name__}",
                                headers={"Retry-After": "5"}) from exc

    @r.post("/verify-remove", response_model=VerifyRemoveAnswer)
    def verify_remove(body: VerifyRemoveRequest, caller: Principal = Depends(as_source)) -> VerifyRemoveAnswer:
        """Standby copies of this source's mailbox the primary lacks: removed at their folder's reset."""
        access.check_mailboxes(caller, body.source, [(body.server, body.address)])
        try:
            return VerifyRemoveAnswer(queued=listing.queue_removal(body.source, body.server, body.address,
                                                                   list(body.folders)))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc

    return r
