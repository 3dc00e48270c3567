"""The standby view: the recovery gateway's capture state of each standby copy, kept current
while the mailbox replicates, so that a cutover is a state store operation.

The view is the DR capture state of the mailbox (its ``mailbox`` row, ``folder_state``,
``catalog`` and ``mid_alias`` rows), dormant while the mailbox replicates: the DR capture only
runs mailboxes that are active at DR or failing back, and a dormant row has nothing to ship.

After each replay pass the replay worker calls :meth:`StandbyView.refresh` on the same session,
under the same per-mailbox lock: the standby copy's folders as they are now and, for each folder
whose state moved since the view last saw it, the delta since the view's cursor (QRESYNC), so
each message the replayer wrote is read once, as metadata (flags, size, GUID). When the view
was current before the pass, the folders are the pass's own LIST (made at its start, for the
standby check and replay too) with only the folders the pass wrote listed again, and a folder
whose changes the pass's journal knows (appends, flags stored, expunges) is not read back
(``mailrepl.shared.engines.replay_journal``); a pass that created, renamed, deleted or reset a
folder makes the view list the whole copy and read back what moved. Every standby
message the id map knows is catalogued (its DR id is aliased to the source's id when the cutover
switches the view on: the id map may change without the standby changing, when a reset folder's
messages are claimed again); one it does not know (never the case while only the replayer
writes) is left pending, so the DR capture reports it as new.

The cursors are the standby's own state after the replayer's last write: once users are let in,
the first DR capture cycle sees exactly what they changed. ``Replica.view_seq`` records the
applied sequence number the view matches; a cutover reads the standby only if it differs.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update

from mailrepl.shared.adapters.base import FolderDelta, FolderInfo, MailboxSession
from mailrepl.shared.capture_state import (
    Fresh, FolderListing, IdMap, KnownFolder, apply_rebuild, known_folders_counted, pair_folders, plan_rebuild,
)
from mailrepl.shared.errors import CursorInvalid, FolderNotFound
from mailrepl.shared.store import Store
from mailrepl.shared.engines.replay_journal import PassJournal
from mailrepl.shared.store.models import Mailbox, Replica

__all__ = ["StandbyView", "ViewState", "is_fresh", "view_state"]

log = logging.getLogger("mailrepl.standby_view")


@dataclass(frozen=True)
class ViewState:
    """The view of one replica as read before a refresh."""

    server: str
    address: str
    applied: int  # the applied sequence number the refreshed view will match
    known: list[KnownFolder]
    counts: dict[int, int | None]  # folder row -> message count
    mailbox_id: int | None = None  # the view's mailbox row (None: not made yet)


_MAILBOX = Mailbox.__table__
_REPLICA = Replica.__table__
# built once: read or written at every replay pass that changed the copy
_MAILBOX_ID = select(_MAILBOX.c.id).where(_MAILBOX.c.server == bindparam("server"),
                                          _MAILBOX.c.address == bindparam("address"))
_SET_VIEW_SEQ = update(_REPLICA).where(_REPLICA.c.id == bindparam("rid")).values(view_seq=bindparam("seq"))


def view_state(s, rid: int, *, with_counts: bool, server: str | None = None, address: str | None = None,
               applied: int | None = None) -> ViewState:
    """Read the view of replica ``rid`` in the caller's reading session ``s`` (``server``,
    ``address``, ``applied``: the replica's, when the caller has just read them). The folders'
    message counts come with them (``with_counts`` is kept for callers; they cost nothing more)."""
    if server is None or address is None or applied is None:
        rep = s.get(Replica, rid)
        server, address, applied = rep.server, rep.address, rep.applied_seq
    mbx_id = s.scalar(_MAILBOX_ID, {"server": server, "address": address})
    known, counts = known_folders_counted(s, mbx_id) if mbx_id else ([], {})
    return ViewState(server, address, applied, known, counts, mbx_id)


def is_fresh(rep: Replica) -> bool:
    """The view matches everything applied to the standby copy."""
    return rep.view_seq is not None and rep.view_seq == rep.applied_seq


class StandbyView:
    def __init__(self, store: Store) -> None:
        self.store = store

    def refresh(self, rid: int, session: MailboxSession, journal: PassJournal | None = None,
                listed: Sequence[FolderInfo] | None = None, state: ViewState | None = None) -> int:
        """Bring the view of replica ``rid`` up to date with its standby copy as it is now (the
        caller holds the mailbox's lock: nothing writes the copy meanwhile). Returns how many
        folders had to be read.

        ``journal``: what the replay pass just made wrote, when the view was current before it;
        a folder the pass appended to, stored flags in or expunged from is then catalogued from
        it, not read back (``mailrepl.shared.engines.replay_journal`` says when it may be).
        ``listed``: the copy's folders as listed at the start of that pass; with an exact
        journal, only the folders the pass wrote are listed again (one folder each), not all.
        ``state``: the view as the caller just read it (:func:`view_state`), else read here."""
        if state is None:
            with self.store.read() as s:
                state = view_state(s, rid, with_counts=journal is not None)
        server, address, applied, known, counts = (state.server, state.address, state.applied, state.known,
                                                   state.counts)
        live = _listed_now(session, journal, listed)
        matches, deleted = pair_folders(known, live, session.features.folder_id)
        listings: list[FolderListing] = []
        complete, read = True, 0
        for m in matches:
            k = m.known
            reset = k is None or k.cursor is None or m.identity_changed  # read it all
            since = None if reset else k.cursor
            if since is not None and since == m.info.cursor:
                listings.append(FolderListing(m, None))
                continue
            delta = (journal.delta(m.info.name, since, counts.get(k.id), m.info)
                     if journal is not None and since is not None else None)
            if delta is not None:
                listings.append(FolderListing(m, delta))
                continue
            if since is None and m.info.messages == 0:
                # listed empty just now (nothing writes the copy meanwhile): all there is to
                # read is its cursor, which the listing gave (a new copy's default folders)
                listings.append(FolderListing(m, FolderDelta(m.info.cursor), reset))
                continue
            read += 1
            try:
                delta = session.changes_since(m.info.name, since)
            except CursorInvalid:
                reset, delta = True, session.changes_since(m.info.name, None)
            except FolderNotFound:  # vanished between LIST and EXAMINE: read again next time
                complete, delta = False, None
            listings.append(FolderListing(m, delta, reset))
        with self.store.tx(durable=False) as s:  # lost in a power failure: refreshed again
            mbx_id = state.mailbox_id or _mailbox(s, server, address).id
            known_shas = journal.shas if journal is not None else {}
            unknown = {x.match.info.name: uids for x in listings if x.delta is not None
                       if (uids := [m.uid for m in x.delta.new if (x.match.info.name, m.uid) not in known_shas])}
            ids = IdMap(s, rid).shas_at(unknown) if unknown else {}

            def identify(folder, meta):
                sha = known_shas.get((folder, meta.uid)) or ids.get((folder, meta.uid))
                return Fresh(sha) if sha is not None else None

            plan = plan_rebuild(listings, deleted, identify)
            # the rows as read for this refresh (under the mailbox's lock nothing else writes them)
            rows = {k.id: (k.name, k.fid, counts.get(k.id)) for k in known} if state.mailbox_id else None
            apply_rebuild(s, mbx_id, plan, rows)
            if complete:
                s.execute(_SET_VIEW_SEQ, {"rid": rid, "seq": applied})
        for out in plan.folders:
            if out.pending:
                log.info("%s: %d message(s) in %r on the standby that replay did not write; captured as new "
                         "after a cutover", address, len(out.pending), out.name)
        return read


def _listed_now(session: MailboxSession, journal: PassJournal | None,
                listed: Sequence[FolderInfo] | None) -> list[FolderInfo]:
    """The copy's folders now: the listing at the start of the pass with the folders the pass
    wrote listed again, where the journal says that no folder came or went; else a full LIST."""
    if listed is None or journal is None or not journal.exact:
        return session.list_folders()
    written = journal.written()
    names = {f.name for f in listed}
    if not written <= names:
        return session.list_folders()
    out = []
    for f in listed:
        if f.name in written:
            f = session.folder_info(f.name)
            if f is None:  # gone meanwhile: read everything
                return session.list_folders()
        out.append(f)
    return out


def _mailbox(s, server: str, address: str) -> Mailbox:
    mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
    if mbx is None:  # dormant until a cutover switches it on
        mbx = Mailbox(server=server, address=address, protected=False, phase="idle", active_site="primary",
                      site_state="replicating")
        s.add(mbx)
        s.flush()
    return mbx
