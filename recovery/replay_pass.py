"""One replay pass of a replicating mailbox, as the replay workers run it (the caller holds the
mailbox's lock): the standby copy checked for damage (``mailrepl.recovery.standby_check``), the
received changes applied, the resync requests a folder reset answers dropped, the standby view
brought up to date.

A pass that applied a folder reset checks the copy again before the view takes the copy as it
is: a wipe that landed during the pass (after the reset of a folder recreated it, before the adds
recreated the others) is asked for again at once, instead of being taken as the new normal by the
view and found only by the next check.

A connection through which damage was seen is not kept for the next pass: a server process
logged in while the copy was being wiped can go on listing the copy as that process last saw it
(its index files removed under it), so that every check through it would find the same folders
missing, and every resync, written through it, would not bring them back.
"""
from __future__ import annotations

import dataclasses
import time

from mailrepl.recovery.standby_check import ResyncRequests, standby_damage
from mailrepl.recovery.standby_view import StandbyView, view_state
from mailrepl.shared.engines.replay import ReplayEngine, ReplayReport
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica
from sqlalchemy import bindparam, select

__all__ = ["ReplayPass"]

_R = Replica.__table__
# built once: read at every pass
_REPLICA_ROW = select(_R.c.site_state, _R.c.server, _R.c.address, _R.c.applied_seq, _R.c.view_seq, _R.c.error).where(
    _R.c.id == bindparam("rid"))

class ReplayPass:
    def __init__(self, store: Store, replay: ReplayEngine, view: StandbyView, resyncs: ResyncRequests) -> None:
        self.store = store
        self.replay = replay
        self.view = view
        self.resyncs = resyncs
        self.checked: dict[int, float] = {}  # replica id -> when its standby copy was last checked (monotonic)

    def run(self, rid: int, session) -> tuple[ReplayReport, str | None] | None:
        """One pass of replica ``rid`` through its standby ``session``: its report and the
        replica's error before it; None if it does not replicate (cutting over: the cutover
        drains; or users are on the standby). The copy is listed once for the check, replay and
        the view (again only where a folder reset or the journal says it must be). The replica
        and its view are read once, before replay: under the mailbox's lock only this pass
        writes them, and replay reports the applied sequence number it leaves."""
        live = session.list_folders()
        for first in (True, False):
            with self.store.read() as s:
                rep = s.execute(_REPLICA_ROW, {"rid": rid}).first()
                if rep is None or rep.site_state != SiteState.REPLICATING.value:
                    return None
                new_copy = first and rep.view_seq is None and rep.applied_seq == 0
                if not new_copy:
                    view_fresh = rep.view_seq is not None and rep.view_seq == rep.applied_seq
                    state = view_state(s, rid, with_counts=view_fresh, server=rep.server, address=rep.address,
                                       applied=rep.applied_seq)
                    self._check(s, rid, session, live, view_fresh=view_fresh, known=state.known,
                                applied=rep.applied_seq)
                    break
            # a new copy: its view is taken before the first pass (a listing, where the copy is
            # still empty), so that what the pass writes — most of a seed, often — is catalogued
            # from its journal instead of read back afterwards
            self.view.refresh(rid, session)
        report = self.replay.replay(rid, session, listing=live)
        if report.last_reset_seq:
            self.resyncs.reset_applied(rid, report.last_reset_seq)
            self.check(rid, session, view_fresh=False)  # what the reset answered may be damaged again
        applied = rep.applied_seq if report.applied_seq is None else report.applied_seq
        if rep.view_seq is None or rep.view_seq != applied:
            state = dataclasses.replace(state, applied=applied)
            # what the pass wrote is the view's delta where the view was current before it
            if view_fresh:
                self.view.refresh(rid, session, report.journal, live, state)
            else:
                self.view.refresh(rid, session, state=state)
        return report, rep.error

    def check(self, rid: int, session, *, view_fresh: bool) -> list[str]:
        """Was the standby copy changed behind our back? If so, a resync is asked for; returns
        the damaged folders."""
        live = session.list_folders()
        with self.store.read() as s:
            return self._check(s, rid, session, live, view_fresh=view_fresh)

    def _check(self, s, rid: int, session, live, *, view_fresh: bool, known=None, applied: int | None = None) -> list[str]:
        """``check`` of the copy as listed (``live``), in the reading session ``s`` (``known``,
        ``applied``: the view's folders and the applied sequence number, just read)."""
        self.checked[rid] = time.monotonic()
        damaged = standby_damage(s, rid, live, view_fresh=view_fresh, use_fid=session.features.folder_id,
                                 known=known, applied=applied)
        if damaged:
            self.resyncs.want(s.get(Replica, rid), damaged)
            if (discard := getattr(session, "discard", None)) is not None:
                # a server process that lived through the wipe may keep seeing the copy as it was
                # (Dovecot: index files removed under it): the next pass reads it through a new one
                discard()
        return damaged
